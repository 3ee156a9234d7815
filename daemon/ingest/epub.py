"""EPUB (2 and 3) -> the chapters in reading order, each read like an HTML page.

The reading order is the package's spine (``META-INF/container.xml`` names the package
document). A chapter's name comes from the table of contents (the EPUB 3 navigation document,
else the EPUB 2 NCX); it starts the ``section`` of every unit of that chapter, followed by the
heading path inside it (``"Chapter 3 > ## Part A"``; a first heading that repeats the chapter's
name is not repeated). Notes
(``<aside epub:type="footnote">``) are kept. Units never span two chapters. A book whose
chapters are encrypted (DRM, listed in ``META-INF/encryption.xml``) is refused as such; the
font obfuscation many books use is not encryption of the text. Standalone (see ``units``).
"""

from __future__ import annotations

import posixpath
from typing import BinaryIO
from urllib.parse import unquote

from lxml import etree
from lxml import html as lhtml

from .html import DROP_TAGS, parse_document
from .sections import SEPARATOR, one_line, path_title
from .units import CORRUPT, ENCRYPTED, Parsed, Refused, TextUnit
from .xmlsafe import parse_xml, refuse_entities
from .zipguard import Package, open_package

OPF = "{http://www.idpf.org/2007/opf}"
CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
NCX = "{http://www.daisy.org/z3986/2005/ncx/}"
ENC = "{http://www.w3.org/2001/04/xmlenc#}"
DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
WHAT = "EPUB book (.epub)"
SMALL_CAP = 16 * 1024 * 1024
CHAPTER_CAP = 64 * 1024 * 1024
# In a book, <aside> holds footnotes and endnotes: text, not a site's sidebar.
_CHAPTER_DROP = DROP_TAGS - {"aside"}


def _resolve(href: str, base: str = "") -> str:
    """A reference relative to the file ``base`` as a package path, without its fragment."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), unquote(href.split("#", 1)[0])))


def _package_document(package: Package) -> str:
    container = parse_xml(package.read("META-INF/container.xml", SMALL_CAP), "META-INF/container.xml")
    rootfile = container.find(f"{CONTAINER}rootfiles/{CONTAINER}rootfile")
    path = rootfile.get("full-path") if rootfile is not None else None
    if not path or not package.has(path):
        raise Refused(CORRUPT, f"not a readable {WHAT}: container.xml names no package document that exists")
    return path


def _toc_entries(package: Package, nav: str | None, ncx: str | None) -> list[tuple[str, str]]:
    """(href with its fragment, label) of every entry of the table of contents, in order."""
    entries: list[tuple[str, str]] = []
    if nav and package.has(nav):
        data = package.read(nav, SMALL_CAP)
        refuse_entities(data, nav)
        try:
            doc = lhtml.document_fromstring(data, parser=lhtml.HTMLParser(no_network=True, huge_tree=False))
        except (etree.ParserError, ValueError):
            return entries
        for link in doc.iter("a"):
            label = one_line(link.text_content())
            if label and link.get("href"):
                entries.append((posixpath.join(posixpath.dirname(nav), link.get("href") or ""), label))
    elif ncx and package.has(ncx):
        root = parse_xml(package.read(ncx, SMALL_CAP), ncx)
        for point in root.iter(NCX + "navPoint"):
            label = one_line(point.findtext(f"{NCX}navLabel/{NCX}text") or "")
            content = point.find(NCX + "content")
            if label and content is not None and content.get("src"):
                entries.append((posixpath.join(posixpath.dirname(ncx), content.get("src") or ""), label))
    return entries


def _chapter_names(entries: list[tuple[str, str]]) -> dict[str, str]:
    """Chapter file -> its name: the entry that points at the file itself, or its only entry.

    A book in one file has one entry per part (``book.xhtml#part2``): none of them names the file.
    """
    by_file: dict[str, list[tuple[bool, str]]] = {}
    for href, label in entries:
        by_file.setdefault(_resolve(href), []).append(("#" in href, label))
    names = {}
    for file, labels in by_file.items():
        whole = [label for has_fragment, label in labels if not has_fragment]
        if whole:
            names[file] = whole[0]
        elif len(labels) == 1:
            names[file] = labels[0][1]
    return names


def _encrypted(package: Package) -> set[str]:
    """Files the book lists as encrypted (paths from the package root)."""
    if not package.has("META-INF/encryption.xml"):
        return set()
    root = parse_xml(package.read("META-INF/encryption.xml", SMALL_CAP), "META-INF/encryption.xml")
    return {
        posixpath.normpath(unquote(ref.get("URI", "")))
        for ref in root.iter(ENC + "CipherReference")
        if ref.get("URI")
    }


def _chapter_units(units: list[TextUnit], chapter: str | None) -> list[TextUnit]:
    """The units of one chapter, the chapter's name first in their section path.

    The chapter's own heading usually repeats its name; then it is not repeated in the path:
    ``"# Chapter 1 > ## Part A"`` in chapter "Chapter 1" becomes ``"Chapter 1 > ## Part A"``.
    """
    if not chapter:
        return units
    out = []
    for unit in units:
        parts = unit.section.split(SEPARATOR) if unit.section else []
        if parts and parts[0].lstrip("#").strip() == chapter:
            parts = parts[1:]
        out.append(TextUnit(unit.text, None, SEPARATOR.join([chapter, *parts])))
    return out


def parse(stream: BinaryIO) -> Parsed:
    """The units of the EPUB in ``stream``, chapter by chapter; ``Refused`` when unreadable."""
    package = open_package(stream, WHAT, ("META-INF/container.xml",))
    opf_path = _package_document(package)
    opf = parse_xml(package.read(opf_path, SMALL_CAP), opf_path)
    manifest: dict[str, tuple[str, str]] = {}
    nav = ncx = None
    for item in opf.iter(OPF + "item"):
        href = _resolve(item.get("href", ""), opf_path)
        media = item.get("media-type", "")
        manifest[item.get("id", "")] = (href, media)
        if "nav" in (item.get("properties") or "").split():
            nav = href
        if media == "application/x-dtbncx+xml":
            ncx = href
    titles = _chapter_names(_toc_entries(package, nav, ncx))
    encrypted = _encrypted(package)
    units: list[TextUnit] = []
    warnings: list[str] = []
    spine = opf.find(OPF + "spine")
    for ref in spine if spine is not None else []:
        href, media = manifest.get(ref.get("idref", ""), ("", ""))
        if not href or href == nav or "html" not in media:
            continue
        if href in encrypted:
            raise Refused(
                ENCRYPTED, f"encrypted (DRM): the chapter {href!r} is listed in META-INF/encryption.xml"
            )
        if not package.has(href):
            warnings.append(f"chapter {href!r} is in the spine but not in the book; skipped")
            continue
        data = package.read(href, CHAPTER_CAP)
        chapter_units, chapter_title, chapter_warnings = parse_document(
            data, web_page=False, drop=_CHAPTER_DROP, what=f"chapter {href!r}"
        )
        name = titles.get(href) or chapter_title
        units += _chapter_units(chapter_units, path_title(name) if name else None)
        warnings += [f"{href}: {w}" for w in chapter_warnings]
    title = opf.find(f".//{DC_TITLE}")
    book_title = one_line(title.text or "") if title is not None else ""
    return Parsed(tuple(units), title=book_title or None, warnings=tuple(warnings))
