"""PowerPoint (.pptx) -> one unit per slide: ``page`` is the slide's number, ``section`` its title.

Slides are numbered as PowerPoint numbers them (their order in the presentation, hidden ones
included). What is kept, per slide: every shape's text in the order of the shape tree (groups
recursed), tables (one ``cell | cell`` line per row), picture alt text (``[image: ...]``), the
alt text of charts and diagrams, and the speaker notes (``Notes: ...``). Slide-number, date and
footer placeholders are left out (the same on every slide). Standalone (see ``units``).
"""

from __future__ import annotations

from typing import BinaryIO

from lxml import etree

from .ooxml import MC, PART_CAP, choice, core_title, main_part, relationships
from .sections import one_line, path_title
from .units import Parsed, TextUnit
from .xmlsafe import parse_xml
from .zipguard import Package, open_package

A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
P = "{http://schemas.openxmlformats.org/presentationml/2006/main}"
R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
WHAT = "PowerPoint presentation (.pptx)"
_BOILERPLATE = ("sldNum", "dt", "ftr")
_TITLES = ("title", "ctrTitle")


def _paragraphs(body: etree._Element | None) -> str:
    """The text of a ``txBody``: one line per ``a:p``, runs and fields in order."""
    if body is None:
        return ""
    lines = []
    for para in body.iter(A + "p"):
        parts = []
        for el in para:
            if el.tag in (A + "r", A + "fld"):
                parts.append(el.findtext(A + "t") or "")
            elif el.tag == A + "br":
                parts.append("\n")
        line = "".join(parts)
        if line.strip():
            lines.append(line)
    return "\n".join(lines)


def _alt(props: etree._Element | None) -> str:
    if props is None:
        return ""
    return one_line(" ".join(filter(None, (props.get("title"), props.get("descr")))))


class _Slide:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.title: str | None = None

    def shapes(self, container: etree._Element) -> None:
        for shape in container:
            tag = shape.tag
            if tag in (P + "sp", P + "cxnSp"):
                self.text_shape(shape)
            elif tag == P + "grpSp":
                self.shapes(shape)
            elif tag == P + "pic":
                alt = _alt(shape.find(f"{P}nvPicPr/{P}cNvPr"))
                if alt:
                    self.blocks.append(f"[image: {alt}]")
            elif tag == P + "graphicFrame":
                table = shape.find(f"{A}graphic/{A}graphicData/{A}tbl")
                if table is not None:
                    self.blocks.append("\n".join(_rows(table)))
                else:
                    alt = _alt(shape.find(f"{P}nvGraphicFramePr/{P}cNvPr"))
                    if alt:  # a chart or a SmartArt diagram: its alt text is what it says
                        self.blocks.append(f"[graphic: {alt}]")
            elif tag == MC + "AlternateContent":
                branch = choice(shape)
                if branch is not None:
                    self.shapes(branch)

    def text_shape(self, shape: etree._Element) -> None:
        placeholder = shape.find(f"{P}nvSpPr/{P}nvPr/{P}ph")
        kind = placeholder.get("type") if placeholder is not None else None
        if kind in _BOILERPLATE:
            return
        text = _paragraphs(shape.find(P + "txBody"))
        if kind in _TITLES and text.strip() and self.title is None:
            self.title = one_line(text)
        if text.strip():
            self.blocks.append(text)
        alt = _alt(shape.find(f"{P}nvSpPr/{P}cNvPr"))
        if alt:
            self.blocks.append(f"[shape: {alt}]")


def _rows(table: etree._Element) -> list[str]:
    lines = []
    for row in table.iter(A + "tr"):
        cells = [one_line(_paragraphs(cell.find(A + "txBody"))) for cell in row.iter(A + "tc")]
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


def _notes(package: Package, slide_part: str) -> str:
    """The speaker notes of a slide: the notes page's body placeholder only."""
    for kind, target in relationships(package, slide_part).values():
        if kind == "notesSlide" and package.has(target):
            root = parse_xml(package.read(target, PART_CAP), target)
            texts = []
            for shape in root.iter(P + "sp"):
                placeholder = shape.find(f"{P}nvSpPr/{P}nvPr/{P}ph")
                if placeholder is not None and placeholder.get("type") == "body":
                    texts.append(_paragraphs(shape.find(P + "txBody")))
            return "\n".join(t for t in texts if t.strip())
    return ""


def parse(stream: BinaryIO) -> Parsed:
    """The units of the .pptx in ``stream``, one per slide with text; ``Refused`` when unreadable."""
    package = open_package(stream, WHAT, ("[Content_Types].xml",))
    presentation_part = main_part(package, "ppt/presentation.xml")
    presentation = parse_xml(package.read(presentation_part, PART_CAP), presentation_part)
    rels = relationships(package, presentation_part)
    slide_list = presentation.find(P + "sldIdLst")
    units = []
    for number, slide_id in enumerate(slide_list if slide_list is not None else [], start=1):
        rel = rels.get(slide_id.get(R + "id", ""))
        if rel is None or not package.has(rel[1]):
            continue
        root = parse_xml(package.read(rel[1], PART_CAP), rel[1])
        slide = _Slide()
        tree = root.find(f"{P}cSld/{P}spTree")
        if tree is not None:
            slide.shapes(tree)
        notes = _notes(package, rel[1])
        if notes:
            slide.blocks.append("Notes: " + notes)
        text = "\n\n".join(b for b in slide.blocks if b.strip())
        if text.strip():
            section = "# " + path_title(slide.title) if slide.title else None
            units.append(TextUnit(text, number, section))
    return Parsed(tuple(units), title=core_title(package))
