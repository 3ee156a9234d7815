"""OpenDocument text (.odt) -> one unit per heading section, read from ``content.xml``.

What is kept, in document order: headings (``text:h`` and its outline level), paragraphs,
lists, sections, tables (one ``cell | cell`` line per row), frames' alt text (``[image: ...]``)
and text boxes (captions), and footnotes and endnotes right after their paragraph. What is
not: generated indexes (a table of contents repeats every heading), tracked deletions and
comments. A password-protected file (its manifest lists encryption data) is refused as such.
Standalone (see ``units``).
"""

from __future__ import annotations

from typing import BinaryIO

from lxml import etree

from .sections import SectionBuilder, one_line
from .units import CORRUPT, ENCRYPTED, UNSUPPORTED, Parsed, Refused
from .xmlsafe import parse_xml
from .zipguard import Package, article, open_package

TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
DRAW = "{urn:oasis:names:tc:opendocument:xmlns:drawing:1.0}"
SVG = "{urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0}"
OFFICE = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
MANIFEST = "{urn:oasis:names:tc:opendocument:xmlns:manifest:1.0}"
DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
WHAT = "OpenDocument text (.odt)"
PART_CAP = 256 * 1024 * 1024
_CONTAINERS = frozenset(
    TEXT + t for t in ("list", "list-item", "list-header", "section", "numbered-paragraph", "index-body")
)
_SKIPPED_BLOCKS = frozenset(
    (
        *(TEXT + t for t in ("table-of-content", "alphabetical-index", "illustration-index", "table-index")),
        *(TEXT + t for t in ("object-index", "user-index", "bibliography", "tracked-changes")),
        *(TEXT + t for t in ("sequence-decls", "variable-decls", "user-field-decls")),
        OFFICE + "forms",
    )
)
_SKIPPED_INLINE = frozenset(
    (
        OFFICE + "annotation",
        OFFICE + "annotation-end",
        *(TEXT + t for t in ("soft-page-break", "bookmark", "bookmark-start", "bookmark-end")),
        *(TEXT + t for t in ("reference-mark", "change", "change-start", "change-end")),
    )
)


def _inline(element: etree._Element, notes: list[str]) -> str:
    """The text of a paragraph or heading: spans, spaces, tabs, breaks, notes, frames."""
    parts = [element.text or ""]
    for child in element:
        tag = child.tag
        if tag == TEXT + "s":
            count = child.get(TEXT + "c", "1")
            parts.append(" " * (int(count) if count.isdigit() and int(count) < 1000 else 1))
        elif tag == TEXT + "tab":
            parts.append("\t")
        elif tag == TEXT + "line-break":
            parts.append("\n")
        elif tag == TEXT + "note":
            mark = one_line(child.findtext(TEXT + "note-citation") or "*") or "*"
            parts.append(f"[^{mark}]")
            body = child.find(TEXT + "note-body")
            if body is not None:
                inner: list[str] = []
                text = "\n".join(_inline(p, inner) for p in _paragraphs_in(body))
                notes.append(f"[^{mark}]: {text.strip()}")
                notes.extend(inner)
        elif isinstance(tag, str) and tag.startswith(DRAW):
            # A frame, shape or group: its alt text (title and description), then its own text
            # (a caption frame, a text box, the words on a rectangle).
            alt = one_line(
                " ".join((child.findtext(SVG + "title") or "", child.findtext(SVG + "desc") or ""))
            )
            if alt:
                parts.append(f" [image: {alt}] ")
            inside = [_inline(p, notes) for p in _paragraphs_in(child)]
            if any(t.strip() for t in inside):
                parts.append(" " + " ".join(inside) + " ")
        elif isinstance(tag, str) and tag not in _SKIPPED_INLINE:
            parts.append(_inline(child, notes))  # spans, links, fields, ruby ...
        parts.append(child.tail or "")
    return "".join(parts)


def _paragraphs_in(element: etree._Element) -> list[etree._Element]:
    """The paragraphs and headings below ``element``, but not those inside one of them."""
    found = []
    for child in element:
        if child.tag in (TEXT + "p", TEXT + "h"):
            found.append(child)
        elif isinstance(child.tag, str):
            found += _paragraphs_in(child)
    return found


class _Reader:
    def __init__(self) -> None:
        self.sections = SectionBuilder()

    def blocks(self, container: etree._Element) -> None:
        for element in container:
            tag = element.tag
            notes: list[str] = []
            if tag == TEXT + "h":
                level = element.get(TEXT + "outline-level", "1")
                self.sections.heading(int(level) if level.isdigit() else 1, _inline(element, notes))
            elif tag == TEXT + "p":
                self.sections.block(_inline(element, notes))
            elif tag in _CONTAINERS:
                self.blocks(element)
            elif tag == TABLE + "table":
                self.sections.block("\n".join(self.rows(element, notes)))
            elif tag in _SKIPPED_BLOCKS:
                continue
            for note in notes:
                self.sections.block(note)

    def rows(self, table: etree._Element, notes: list[str]) -> list[str]:
        lines = []
        for row in table.iter(TABLE + "table-row"):
            cells = [
                one_line(" ".join(_inline(p, notes) for p in cell.iter(TEXT + "p", TEXT + "h")))
                for cell in row
                if cell.tag == TABLE + "table-cell"
            ]
            if any(cells):
                lines.append(" | ".join(cells))
        return lines


def _check_encryption(package: Package) -> None:
    if not package.has("META-INF/manifest.xml"):
        return
    manifest = parse_xml(package.read("META-INF/manifest.xml", 16 * 1024 * 1024), "META-INF/manifest.xml")
    for entry in manifest.iter(MANIFEST + "file-entry"):
        if (
            entry.get(MANIFEST + "full-path") == "content.xml"
            and entry.find(MANIFEST + "encryption-data") is not None
        ):
            raise Refused(
                ENCRYPTED,
                "encrypted (a password-protected OpenDocument file); save a copy without the password "
                "to index it",
            )


def _title(package: Package) -> str | None:
    if not package.has("meta.xml"):
        return None
    meta = parse_xml(package.read("meta.xml", 16 * 1024 * 1024), "meta.xml")
    title = meta.find(f".//{DC_TITLE}")
    text = one_line(title.text or "") if title is not None else ""
    return text or None


def parse(stream: BinaryIO) -> Parsed:
    """The units of the .odt in ``stream``; ``Refused`` when it is not a readable one."""
    package = open_package(stream, WHAT, ("content.xml",))
    _check_encryption(package)
    root = parse_xml(package.read("content.xml", PART_CAP), "content.xml")
    body = root.find(OFFICE + "body")
    if body is None:
        raise Refused(CORRUPT, f"not {article(WHAT)}: content.xml has no office:body")
    text = body.find(OFFICE + "text")
    if text is None:
        kinds = ", ".join(etree.QName(child).localname for child in body if isinstance(child.tag, str))
        raise Refused(
            UNSUPPORTED, f"an OpenDocument {kinds or 'file'}, not a text document; only .odt text is read"
        )
    reader = _Reader()
    reader.blocks(text)
    return Parsed(tuple(reader.sections.units()), title=_title(package))
