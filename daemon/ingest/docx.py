"""Word (.docx) -> one unit per heading section, read straight from the package's XML.

What is kept, in document order: paragraphs (runs, tabs, breaks, hyperlinks, fields' results,
content controls, tracked insertions), tables (one ``cell | cell`` line per row, nested tables
flattened into their cell), text boxes, image alt text (``[image: ...]``), and footnotes and
endnotes right after the paragraph that cites them. What is not: tracked deletions, field
codes, the duplicate ``mc:Fallback`` copy of drawings, comments (not the author's text), and
page headers and footers (the same line on every page; noise in every search).

A paragraph is a heading when its style *is* or is based on "heading N" (by the style's name,
not its id: a German Word writes the id ``berschrift1``) or carries an outline level; the
"Title" style gives the document's title. Standalone (see ``units``).
"""

from __future__ import annotations

import re
from typing import BinaryIO

from lxml import etree

from .ooxml import MC, PART_CAP, choice, core_title, local_name, main_part, relationships
from .sections import SectionBuilder, one_line
from .units import CORRUPT, Parsed, Refused
from .xmlsafe import parse_xml
from .zipguard import Package, article, open_package

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
WHAT = "Word document (.docx)"
TITLE_LEVEL = 0
_HEADING_NAME = re.compile(r"(?:heading|überschrift|titre|titolo|título|kop)\s*([1-9])", re.IGNORECASE)
_SKIPPED_INLINE = frozenset(
    (W + "del", W + "moveFrom", W + "instrText", W + "delText", W + "txbxContent", MC + "Fallback")
)
_NOTE_SEPARATORS = ("separator", "continuationSeparator", "continuationNotice")
_MAX_BASED_ON = 16


def _outline_level(ppr: etree._Element | None) -> int | None:
    """Heading level from ``w:outlineLvl`` (0-based in the file; 9 means body text)."""
    if ppr is None:
        return None
    lvl = ppr.find(W + "outlineLvl")
    value = lvl.get(W + "val", "") if lvl is not None else ""
    return int(value) + 1 if value.isdigit() and int(value) < 9 else None


def _style_levels(package: Package) -> dict[str, int]:
    """styleId -> heading level (``TITLE_LEVEL`` for Title), following ``w:basedOn``."""
    if not package.has("word/styles.xml"):
        return {}
    root = parse_xml(package.read("word/styles.xml", PART_CAP), "word/styles.xml")
    own: dict[str, tuple[int | None, str | None]] = {}
    for style in root.iter(W + "style"):
        sid = style.get(W + "styleId")
        if sid is None:
            continue
        name_el = style.find(W + "name")
        name = (name_el.get(W + "val") or "") if name_el is not None else ""
        match = _HEADING_NAME.fullmatch(name.strip())
        level: int | None
        if match:
            level = int(match.group(1))
        elif name.strip().casefold() == "title":
            level = TITLE_LEVEL
        else:
            level = _outline_level(style.find(W + "pPr"))
        based = style.find(W + "basedOn")
        own[sid] = (level, based.get(W + "val") if based is not None else None)
    levels: dict[str, int] = {}
    for sid in own:
        current: str | None = sid
        for _ in range(_MAX_BASED_ON):  # bounded: a basedOn chain can loop
            if current is None or current not in own:
                break
            level, parent = own[current]
            if level is not None:
                levels[sid] = level
                break
            current = parent
    return levels


class _Notes:
    """Footnote and endnote texts by reference; the ones a paragraph cites wait in ``pending``."""

    def __init__(self, package: Package, main: str) -> None:
        self.texts: dict[str, str] = {}
        self.pending: list[str] = []
        for kind, target in relationships(package, main).values():
            if kind in ("footnotes", "endnotes") and package.has(target):
                tag = "footnote" if kind == "footnotes" else "endnote"
                # Footnote and endnote ids are separate number spaces: endnotes get an "e".
                prefix = "" if tag == "footnote" else "e"
                root = parse_xml(package.read(target, PART_CAP), target)
                for note in root.iter(W + tag):
                    if note.get(W + "type") in _NOTE_SEPARATORS:
                        continue
                    paras = (_inline_text(p, None) for p in note.iter(W + "p"))
                    self.texts[prefix + note.get(W + "id", "")] = "\n".join(
                        t for t in paras if t.strip()
                    ).strip()

    def cite(self, key: str) -> str:
        if key in self.texts:
            self.pending.append(f"[^{key}]: {self.texts[key]}")
        return f"[^{key}]"

    def take(self) -> list[str]:
        out, self.pending = self.pending, []
        return out


def _inline_text(p: etree._Element, notes: _Notes | None) -> str:
    """The text of one ``w:p`` in reading order (text boxes excluded: they are read as blocks)."""
    parts: list[str] = []

    def walk(element: etree._Element) -> None:
        for child in element:
            tag = child.tag
            if not isinstance(tag, str) or tag in _SKIPPED_INLINE:
                continue
            if tag == W + "t":
                parts.append(child.text or "")
            elif tag in (W + "tab", W + "ptab"):
                parts.append("\t")
            elif tag in (W + "br", W + "cr"):
                parts.append("\n")
            elif tag == W + "noBreakHyphen":
                parts.append("-")
            elif tag in (W + "footnoteReference", W + "endnoteReference"):
                key = ("e" if tag == W + "endnoteReference" else "") + child.get(W + "id", "")
                parts.append(notes.cite(key) if notes is not None else f"[^{key}]")
            elif local_name(tag) == "docPr":  # wp:docPr: the alt text of a picture or shape
                alt = " ".join(filter(None, (child.get("title"), child.get("descr"))))
                if alt.strip():
                    parts.append(f" [image: {one_line(alt)}] ")
            elif local_name(tag) == "imagedata" and child.get("alt"):  # legacy VML picture
                parts.append(f" [image: {one_line(child.get('alt') or '')}] ")
            else:
                walk(child)  # runs, hyperlinks, insertions, smart tags, simple fields, controls

    walk(p)
    return "".join(parts)


class _Reader:
    def __init__(self, package: Package, main: str) -> None:
        self.levels = _style_levels(package)
        self.notes = _Notes(package, main)
        self.sections = SectionBuilder()
        self.title: str | None = None

    def blocks(self, container: etree._Element) -> None:
        for element in container:
            tag = element.tag
            if tag == W + "p":
                self.paragraph(element)
            elif tag == W + "tbl":
                self.sections.block("\n".join(self.rows(element)))
            elif tag == W + "sdt":
                content = element.find(W + "sdtContent")
                if content is not None:
                    self.blocks(content)
            elif tag in (W + "customXml", W + "ins", W + "smartTag"):
                self.blocks(element)
            elif tag == MC + "AlternateContent":
                branch = choice(element)
                if branch is not None:
                    self.blocks(branch)
            else:
                continue
            for note in self.notes.take():  # a note right after the paragraph that cites it
                self.sections.block(note)

    def paragraph(self, p: etree._Element) -> None:
        ppr = p.find(W + "pPr")
        style = ppr.find(W + "pStyle") if ppr is not None else None
        level = self.levels.get(style.get(W + "val", "")) if style is not None else None
        if level is None:
            level = _outline_level(ppr)
        text = _inline_text(p, self.notes)
        if level == TITLE_LEVEL:
            if self.title is None and text.strip():
                self.title = one_line(text)
            self.sections.block(text)
        elif level is not None and text.strip():
            self.sections.heading(level, text)
        else:
            self.sections.block(text)
        for box in p.iter(W + "txbxContent"):
            # Only the outermost box of this paragraph, and not the mc:Fallback copy of it.
            outer = box.getparent()
            nested = False
            while outer is not None and outer is not p:
                if outer.tag in (W + "txbxContent", MC + "Fallback"):
                    nested = True
                    break
                outer = outer.getparent()
            if not nested:
                self.blocks(box)

    def rows(self, table: etree._Element) -> list[str]:
        """One ``cell | cell`` line per row; a nested table's rows join its cell's text."""
        lines: list[str] = []
        for row in _children(table, W + "tr"):
            cells = []
            for cell in _children(row, W + "tc"):
                texts = []
                for block in cell:
                    if block.tag == W + "p":
                        texts.append(_inline_text(block, self.notes))
                    elif block.tag == W + "tbl":
                        texts.extend(self.rows(block))
                cells.append(one_line(" ".join(texts)))
            if any(cells):
                lines.append(" | ".join(cells))
        return lines


def _children(element: etree._Element, tag: str) -> list[etree._Element]:
    """``element``'s children named ``tag``, looking through content controls and custom XML."""
    out = []
    for child in element:
        if child.tag == tag:
            out.append(child)
        elif child.tag == W + "sdt":
            content = child.find(W + "sdtContent")
            if content is not None:
                out += _children(content, tag)
        elif child.tag == W + "customXml":
            out += _children(child, tag)
    return out


def parse(stream: BinaryIO) -> Parsed:
    """The units of the .docx in ``stream``; ``Refused`` when it is not a readable one."""
    package = open_package(stream, WHAT, ("[Content_Types].xml",))
    main = main_part(package, "word/document.xml")
    if not package.has(main):
        raise Refused(CORRUPT, f"not {article(WHAT)}: the zip has no {main!r}")
    root = parse_xml(package.read(main, PART_CAP), main)
    body = root.find(W + "body")
    reader = _Reader(package, main)
    if body is not None:
        reader.blocks(body)
    return Parsed(tuple(reader.sections.units()), title=core_title(package) or reader.title)
