"""Parsing the XML inside documents without letting it attack the parser.

Office Open XML, OpenDocument and EPUB packaging parts never need a document type declaration,
and every entity attack (billion laughs, quadratic blow-up, external entities reading
``/etc/passwd``) needs one: a part that declares one is refused outright, before and after
parsing. The parser itself never expands or fetches entities and keeps libxml2's own limits
(at most 10 MB in one text node, 256 levels of nesting), so even a declaration it did not
see costs nothing. Standalone (see ``units``).
"""

from __future__ import annotations

from lxml import etree

from .units import CORRUPT, LIMIT, Refused

# Where a declaration can legitimately sit: after the XML declaration, before the root.
_PROLOG_BYTES = 4096
_DECLARATIONS = (b"<!DOCTYPE", b"<!doctype", b"<!ENTITY")


def safe_parser() -> etree.XMLParser:
    """An XML parser that keeps entity references as they are and reads nothing but its input."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def refuse_entities(data: bytes, what: str) -> None:
    """Refuse ``data`` when its first bytes declare XML entities (HTML and XHTML never need to)."""
    if b"<!ENTITY" in data[: _PROLOG_BYTES * 2]:
        raise Refused(
            LIMIT,
            f"{what} declares XML entities (<!ENTITY>), which this format never needs: refused "
            "as a possible entity-expansion attack (billion laughs)",
        )


def parse_xml(data: bytes, what: str) -> etree._Element:
    """The root of the XML part ``data`` (named ``what`` in messages); ``Refused`` when it cannot be."""
    if any(marker in data[:_PROLOG_BYTES] for marker in _DECLARATIONS):
        raise _declared(what)
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        message = str(exc)
        if "huge" in message.lower() or "amplification" in message.lower():
            raise Refused(LIMIT, f"{what}: exceeds an XML safety limit: {message}") from None
        raise Refused(CORRUPT, f"{what}: malformed XML: {message}") from None
    if root is None:
        raise Refused(CORRUPT, f"{what}: empty XML")
    if root.getroottree().docinfo.doctype:
        raise _declared(what)  # a declaration further down than the prolog check looked
    return root


def _declared(what: str) -> Refused:
    return Refused(
        LIMIT,
        f"{what}: XML with a DOCTYPE/ENTITY declaration, which this format never has: refused "
        "as a possible entity-expansion attack (billion laughs)",
    )
