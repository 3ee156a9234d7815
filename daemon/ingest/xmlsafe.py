"""Parsing the XML inside documents without letting it attack the parser.

Every entity attack (billion laughs, quadratic blow-up, external entities reading
``/etc/passwd``) needs an entity declaration, and no Office Open XML, OpenDocument or EPUB part
ever needs one: a part that declares entities is refused outright. A bare document type
declaration is harmless and does occur (an EPUB 2 table of contents names the NCX DTD), so it
is accepted; its DTD is never loaded. The parser never expands or fetches entities and keeps
libxml2's own limits (at most 10 MB in one text node, 256 levels of nesting), so a declaration
costs nothing even before it is refused. Standalone (see ``units``).
"""

from __future__ import annotations

from lxml import etree

from .units import CORRUPT, LIMIT, Refused

# Where declarations sit: after the XML declaration, before the root element.
_PROLOG_BYTES = 4096


def safe_parser() -> etree.XMLParser:
    """An XML parser that keeps entity references as they are and reads nothing but its input.

    (Not ``collect_ids=False``: with it libxml2 tries to load a DOCTYPE's external DTD.)
    """
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
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
    if b"<!ENTITY" in data[:_PROLOG_BYTES]:
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
    subset = root.getroottree().docinfo.internalDTD
    if subset is not None and any(True for _ in subset.iterentities()):
        raise _declared(what)  # declared further down than the prolog check looked
    return root


def _declared(what: str) -> Refused:
    return Refused(
        LIMIT,
        f"{what}: XML with entity declarations (<!ENTITY>), which this format never has: refused "
        "as a possible entity-expansion attack (billion laughs)",
    )
