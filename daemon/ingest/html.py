"""HTML (.html, .htm; and the chapters of an EPUB) -> one unit per heading section, plus ``<title>``.

lxml's HTML parser builds the tree (it copes with any tag soup, never expands entities and
never fetches anything); a walker then keeps what a reader reads: headings (``h1``-``h6``, which
make the section path), paragraphs and other blocks, ``<pre>`` verbatim, tables (one ``cell |
cell`` line per row) and image alt text (``[image: ...]``). Left out: scripts, styles,
templates, form controls, embedded objects, hidden elements, and the site's chrome around the
text: navigation, banners, page headers and footers, sidebars, cookie notices, skip links. When
the page marks its content (``<main>``, ``role="main"``, or a single ``<article>``) only that is
read, its ``<aside>`` notes included. Chrome found by class or id never takes a heading or an
element holding half of the text, and a page left empty by the rules is read whole.

The encoding comes from a byte-order mark, a ``<meta charset>`` (or the XML declaration), else
UTF-8 when the bytes are valid UTF-8, else Windows-1252, as browsers do. A page larger than the
limit it is given is cut at a tag boundary before parsing, with a warning: parsing takes about
five times the page's size in memory. Standalone (see ``units``).
"""

from __future__ import annotations

import codecs
import os
import re
from typing import BinaryIO

from lxml import etree
from lxml import html as lhtml

from .sections import SectionBuilder, one_line
from .units import Parsed, TextUnit
from .xmlsafe import refuse_entities

_MIB = 1024 * 1024
_SNIFF_BYTES = 4096
_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE
)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]{0,200}?encoding\s*=\s*["']([A-Za-z0-9_.:-]{1,40})""")
# WHATWG: these labels mean the wider Windows code page in every browser.
_CODEC_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "gb2312": "gbk",
}

DROP_TAGS = frozenset(
    (
        "script", "style", "noscript", "template", "nav", "button", "select", "textarea",
        "svg", "iframe", "object", "embed", "canvas", "head", "dialog", "menu", "aside",
    )
)  # fmt: skip
# Page-level header and footer are chrome; inside an article they hold its title and byline.
CHROME_TAGS = frozenset(("header", "footer"))
_SECTIONING = frozenset(("article", "main", "section"))
_BOILERPLATE_ROLES = frozenset(
    ("navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "dialog")
)
# Class or id tokens of chrome, matched whole ("site-header" is chrome, "entry-header" holds a
# post's title), or by their last word ("rustdoc-breadcrumbs", "left-sidebar", "post-share").
# Not words a page's own sections are named by: a privacy policy's <section id="cookies"> or
# id="data-sharing" is content. Headings are never chrome by name, and neither is an element
# holding half of the content's text or more (a "with-sidebar" layout wrapper, a page's form).
_BOILERPLATE_TOKENS = frozenset(
    (
        "nav", "navbar", "navigation", "menu", "menu-bar", "menubar", "topbar", "breadcrumb",
        "breadcrumbs", "sidebar", "site-header", "site-footer", "page-footer", "footer",
        "cookie-banner", "cookie-notice", "cookie-consent", "cookie-bar", "cookiebar", "banner",
        "share", "social-links", "skip-link", "skip-links", "skip-to-content", "toc", "related-posts",
        "advertisement", "ads", "ad",
    )
)  # fmt: skip
_BOILERPLATE_LAST_WORDS = frozenset(
    (
        "breadcrumb", "breadcrumbs", "navbar", "sidebar", "nav", "navigation", "menu", "menubar",
        "toolbar", "share", "social", "footer", "advert",
    )
)  # fmt: skip
# Links that only mark a heading's anchor: "§" (rustdoc), "¶" (Sphinx), "#" (GitHub).
_ANCHOR_MARKS = frozenset(("§", "¶", "#", "🔗"))
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    (
        "p", "div", "li", "dd", "dt", "blockquote", "section", "article", "main", "figure",
        "figcaption", "address", "details", "summary", "ul", "ol", "dl", "caption", "body",
        "center", "header", "footer", "hr", "legend", "fieldset",
    )
)  # fmt: skip
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def sniff_encoding(data: bytes) -> tuple[str, bool]:
    """The codec for ``data`` and whether the page declared it (a BOM, meta or XML declaration)."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", True
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", True
    head = data[:_SNIFF_BYTES]
    match = _XML_ENCODING.match(head) or _META_CHARSET.search(head)
    if match:
        label = match.group(1).decode("ascii").lower()
        label = _CODEC_ALIASES.get(label, label)
        try:
            return codecs.lookup(label).name, True
        except LookupError:
            pass  # an unknown label: guess as if there were none
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A page cut in the middle of a character is still UTF-8.
        if exc.start < len(data) - 3:
            return "cp1252", False
    return "utf-8", False


def decode(data: bytes) -> tuple[str, list[str]]:
    """The page's text and a warning when bytes were not valid in its encoding."""
    codec, declared = sniff_encoding(data)
    try:
        return data.decode(codec), []
    except UnicodeDecodeError as exc:
        source = "declared" if declared else "guessed"
        warning = (
            f"bytes not valid in the page's {source} encoding {codec} were replaced "
            f"(first at byte {exc.start})"
        )
        return data.decode(codec, "replace"), [warning]


def _tokens(element: etree._Element) -> set[str]:
    return {t.lower() for attr in ("class", "id") for t in (element.get(attr) or "").split()}


def _boilerplate_token(tokens: set[str]) -> bool:
    if not tokens.isdisjoint(_BOILERPLATE_TOKENS):
        return True
    return any(
        t.replace("_", "-").rsplit("-", 1)[-1] in _BOILERPLATE_LAST_WORDS
        for t in tokens
        if "-" in t or "_" in t
    )


def _is_chrome(element: lhtml.HtmlElement, tag: str, drop: frozenset[str], site: int) -> bool:
    """Whether ``element`` is left out: a dropped tag, hidden, or (on a web ``site``) its chrome.

    ``site`` is 0 for a document that is not a web page, else the text length (half the
    content's) from which an element holds the content rather than chrome, whatever its name.
    """
    if tag in drop:
        return True
    if site and tag in CHROME_TAGS:
        parent = element.getparent()
        while parent is not None and parent.tag not in _SECTIONING:
            parent = parent.getparent()
        return parent is None or tag == "footer"
    if element.get("hidden") is not None or element.get("aria-hidden") == "true":
        return True
    if (element.get("role") or "").lower() in _BOILERPLATE_ROLES:
        return True
    style = element.get("style")
    if style and _HIDDEN_STYLE.search(style):
        return True
    if tag == "a" and (element.text or "").strip() in _ANCHOR_MARKS and len(element) == 0:
        return True
    return (
        bool(site)
        and tag not in ("body", "main", "article")
        and tag not in _HEADINGS
        and _boilerplate_token(_tokens(element))
        and len(element.text_content()) < site
    )


def _text(element: lhtml.HtmlElement, drop: frozenset[str], site: int) -> str:
    """The text of ``element`` without what the walker leaves out (a heading's "copy" button ...)."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and not _is_chrome(child, child.tag.lower(), drop, site):
            tag = child.tag.lower()
            if tag == "img" and child.get("alt"):
                parts.append(f" [image: {one_line(child.get('alt') or '')}] ")
            elif tag in _BLOCKS or tag in _HEADINGS or tag == "br":
                # Paragraphs in a table cell: "First. Second", not "First.Second".
                parts.append(f" {_text(child, drop, site)} ")
            else:
                parts.append(_text(child, drop, site))
        parts.append(child.tail or "")
    return "".join(parts)


class _Walker:
    """Collects inline text into paragraphs and paragraphs into sections."""

    def __init__(self, sections: SectionBuilder, drop: frozenset[str], site: int) -> None:
        self.sections = sections
        self.drop = drop
        self.site = site
        self.inline: list[str] = []

    def text(self, s: str | None) -> None:
        if s:
            self.inline.append(s)

    def end_paragraph(self) -> None:
        line = one_line("".join(self.inline))
        self.inline = []
        self.sections.block(line)

    def walk(self, element: lhtml.HtmlElement) -> None:
        for child in element:
            tag = child.tag
            if not isinstance(tag, str):  # a comment or processing instruction
                self.text(child.tail)
                continue
            tag = tag.lower()
            if _is_chrome(child, tag, self.drop, self.site):
                self.text(child.tail)
                continue
            if tag in _HEADINGS:
                self.end_paragraph()
                self.sections.heading(_HEADINGS[tag], _text(child, self.drop, self.site))
            elif tag == "table":
                self.end_paragraph()
                self.sections.block("\n".join(_rows(child, self.drop, self.site)))
            elif tag == "pre":
                self.end_paragraph()
                self.sections.block(child.text_content().strip("\n"))
            elif tag == "img":
                alt = one_line(child.get("alt") or "")
                if alt:
                    self.text(f" [image: {alt}] ")
            elif tag == "br":
                self.end_paragraph()
            else:
                block = tag in _BLOCKS
                if block:
                    self.end_paragraph()
                self.text(child.text)
                self.walk(child)
                if block:
                    self.end_paragraph()
            self.text(child.tail)


def _rows(table: lhtml.HtmlElement, drop: frozenset[str], site: int) -> list[str]:
    """One ``cell | cell`` line per row of ``table`` (not of tables nested in its cells)."""
    lines = []
    rows: list[lhtml.HtmlElement] = []
    for child in table:
        if child.tag == "tr":
            rows.append(child)
        elif child.tag in ("thead", "tbody", "tfoot"):
            rows.extend(r for r in child if r.tag == "tr")
    for row in rows:
        cells = [one_line(_text(cell, drop, site)) for cell in row if cell.tag in ("td", "th")]
        if any(cells):
            lines.append(" | ".join(cells))
    caption = table.find("caption")
    if caption is not None and caption.text_content().strip():
        lines.insert(0, one_line(caption.text_content()))
    return lines


def _content_root(doc: lhtml.HtmlElement) -> lhtml.HtmlElement:
    """The element holding the page's content: its ``<main>``, a single ``<article>``, or the body."""
    for query in ("//main", "//*[@role='main']"):
        found = doc.xpath(query)
        if len(found) == 1:
            return found[0]  # type: ignore[no-any-return]
    articles = doc.xpath("//article")
    if len(articles) == 1:
        return articles[0]  # type: ignore[no-any-return]
    body = doc.find("body")
    return body if body is not None else doc


def parse_document(
    data: bytes, *, web_page: bool = True, drop: frozenset[str] = DROP_TAGS, what: str = "the page"
) -> tuple[list[TextUnit], str | None, list[str]]:
    """Units, ``<title>`` and warnings of one HTML document's bytes.

    A ``web_page`` is read as a site's page: only its marked content (``<main>`` ...) when it
    has one, without the site's chrome. An EPUB chapter is not (its headers and footers are
    the book's). ``drop`` are the tags left out; ``what`` names the document in messages.
    """
    refuse_entities(data, what)
    text, warnings = decode(data)
    parser = lhtml.HTMLParser(
        encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True, huge_tree=False
    )
    try:
        doc = lhtml.document_fromstring(text.encode("utf-8"), parser=parser)
    except (etree.ParserError, ValueError):
        return [], None, warnings  # "Document is empty": no element at all
    title_el = doc.find("head/title")  # not an <svg> <title> in the body
    title = one_line(title_el.text_content()) if title_el is not None else ""
    body = doc.find("body")
    root = _content_root(doc) if web_page else (body if body is not None else doc)
    if web_page and root is not body and root is not doc:
        # Inside marked content an <aside> is the text's own: a footnote, a note, an
        # admonition (docutils writes them so); around it, a sidebar.
        drop = drop - {"aside"}
    site = max(1, len(root.text_content()) // 2) if web_page else 0
    units = _walk(root, drop, site)
    if site and not units:
        # What looked like chrome was all there is: better the whole page than nothing.
        units = _walk(root, drop, 0)
        if units:
            warnings.append(
                "the page's text is all in what looks like navigation or sidebars; read all of it"
            )
    return units, title or None, warnings


def _walk(root: lhtml.HtmlElement, drop: frozenset[str], site: int) -> list[TextUnit]:
    walker = _Walker(SectionBuilder(), drop, site)
    walker.text(root.text)
    walker.walk(root)
    walker.end_paragraph()
    return walker.sections.units()


def _read_cut(stream: BinaryIO, max_bytes: int) -> tuple[bytes, list[str]]:
    """At most ``max_bytes`` of the page, cut before a tag, and the warning that says so."""
    data = stream.read(max_bytes + 1)
    if len(data) <= max_bytes:
        return data, []
    size = os.fstat(stream.fileno()).st_size
    data = data[:max_bytes]
    cut = data.rfind(b"<")
    if cut > max_bytes // 2:
        data = data[:cut]
    warning = (
        f"HTML page is {size / _MIB:.1f} MB; only its first {len(data) / _MIB:.1f} MB were read "
        "(raise daemon.max_html_mb to index all of it)"
    )
    return data, [warning]


def parse(stream: BinaryIO, max_bytes: int) -> Parsed:
    """The units of the HTML page in ``stream``, read up to ``max_bytes``."""
    data, warnings = _read_cut(stream, max_bytes)
    units, title, more = parse_document(data)
    return Parsed(tuple(units), title=title, warnings=tuple(warnings + more))
