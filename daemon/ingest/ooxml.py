"""What .docx and .pptx share: relationship parts, the main part, the core properties' title.

Standalone (see ``units``).
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from lxml import etree

from .xmlsafe import parse_xml
from .zipguard import Package

MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
PART_CAP = 256 * 1024 * 1024
SMALL_PART_CAP = 16 * 1024 * 1024


def relationships(package: Package, part: str) -> dict[str, tuple[str, str]]:
    """Relationship id -> (type's last path segment, target part) of ``part`` ("" = the package).

    External targets (hyperlinks) are left out; targets are resolved against the part's folder.
    """
    folder, name = posixpath.split(part)
    rels_part = posixpath.join(folder, "_rels", name + ".rels")
    if not package.has(rels_part):
        return {}
    root = parse_xml(package.read(rels_part, SMALL_PART_CAP), rels_part)
    out: dict[str, tuple[str, str]] = {}
    for rel in root.iter(REL + "Relationship"):
        if rel.get("TargetMode") == "External":
            continue
        target = unquote(rel.get("Target", ""))
        if target.startswith("/"):
            full = target.lstrip("/")
        else:
            full = posixpath.normpath(posixpath.join(folder, target))
        out[rel.get("Id", "")] = (rel.get("Type", "").rsplit("/", 1)[-1], full)
    return out


def main_part(package: Package, default: str) -> str:
    """The package's main document part (``officeDocument``); usually ``default``, not always."""
    for kind, target in relationships(package, "").values():
        if kind == "officeDocument" and package.has(target):
            return target
    return default


def core_title(package: Package) -> str | None:
    """The document title set in its properties (``docProps/core.xml``), if any."""
    if not package.has("docProps/core.xml"):
        return None
    core = parse_xml(package.read("docProps/core.xml", SMALL_PART_CAP), "docProps/core.xml")
    title = core.find(DC_TITLE)
    text = " ".join((title.text or "").split()) if title is not None else ""
    return text or None


def local_name(tag: object) -> str:
    """``w:docPr`` -> ``docPr``; "" for comments and processing instructions."""
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def choice(alternate: etree._Element) -> etree._Element | None:
    """The ``mc:Choice`` branch of ``mc:AlternateContent`` (the ``mc:Fallback`` repeats it)."""
    return alternate.find(MC + "Choice")
