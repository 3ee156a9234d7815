"""Each format through ``extract`` (so through the real sandboxed worker for all but text and
Markdown), on real documents written by the libraries that write them (see documents.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import documents as docs
import pytest

from daemon.ingest import markdown
from daemon.ingest.chunker import chunk_units
from daemon.ingest.extract import FORMATS, Extracted, ExtractLimits, extract, extraction_version
from daemon.ingest.sandbox import WORKER_SCRIPT

MIB = 1024 * 1024
LIMITS = ExtractLimits(max_bytes=50 * MIB, timeout_s=120, memory_bytes=1024 * MIB)
INGEST = Path(__file__).resolve().parents[2] / "daemon" / "ingest"


def sections(result: Extracted) -> list[str | None]:
    return [u.section for u in result.units]


def text_of(result: Extracted) -> str:
    return "\n".join(u.text for u in result.units)


def unit_with(result: Extracted, needle: str) -> tuple[int | None, str | None]:
    """(page, section) of the unit holding ``needle``."""
    found = [(u.page, u.section) for u in result.units if needle in u.text]
    assert len(found) == 1, (needle, found)
    return found[0]


def in_order(haystack: str, *needles: str) -> bool:
    positions = [haystack.find(n) for n in needles]
    return all(p >= 0 for p in positions) and positions == sorted(positions)


# -- Word ------------------------------------------------------------------------------------


def test_docx_headings_become_sections_in_document_order(tmp_path: Path) -> None:
    result = extract(docs.make_docx(tmp_path / "orchard.docx"), LIMITS)
    assert result.title == "Orchard Handbook"
    assert sections(result) == [
        None,
        "# Planting",
        "# Planting > ## Soil",
        "# Pruning",
        "# Harvest",
    ]
    text = text_of(result)
    assert in_order(text, "The Orchard Handbook", docs.DOCX_PLANTING, docs.DOCX_SOIL, docs.DOCX_PRUNING)
    assert unit_with(result, docs.DOCX_PRUNING) == (None, "# Pruning")
    # The footnote follows the paragraph that cites it; the table's rows are lines.
    assert unit_with(result, "NOTE-DOCX Grafted trees") == (None, "# Planting")
    assert "[^1]: NOTE-DOCX Grafted trees" in text
    assert "Soil | TABLE-PH\nLoam | 6.0 to 7.0" in text
    assert unit_with(result, "ALT-DOCX") == (None, "# Pruning")
    assert "NOISE-HEADER" not in text
    assert result.warnings == ()


# -- PowerPoint --------------------------------------------------------------------------------


def test_pptx_gives_one_unit_per_slide_numbered_as_powerpoint_does(tmp_path: Path) -> None:
    result = extract(docs.make_pptx(tmp_path / "review.pptx"), LIMITS)
    assert result.title == "Quarterly Review"
    # Slide 3 is blank: no unit, and slide 4 keeps its number.
    assert [(u.page, u.section) for u in result.units] == [
        (1, "# Quarterly Review"),
        (2, "# Revenue by region"),
        (4, "# Customer support"),
    ]
    assert unit_with(result, "Region | TABLE-REVENUE") == (2, "# Revenue by region")
    assert unit_with(result, docs.PPTX_REVENUE_NOTES) == (2, "# Revenue by region")
    assert "Notes: " + docs.PPTX_REVENUE_NOTES in text_of(result)
    assert unit_with(result, "ALT-PPTX chart") == (4, "# Customer support")
    assert unit_with(result, docs.PPTX_SUPPORT) == (4, "# Customer support")


def test_chunks_never_straddle_a_slide_or_a_section(tmp_path: Path) -> None:
    result = extract(docs.make_pptx(tmp_path / "review.pptx"), LIMITS)
    chunks = chunk_units(result.units, size=120, overlap=20)
    assert {c.page for c in chunks} == {1, 2, 4}
    for chunk in chunks:
        unit = next(u for u in result.units if u.page == chunk.page)
        assert chunk.text in unit.text and chunk.section == unit.section
    md = extract(_write(tmp_path / "chess.md", docs.MD_TEXT), LIMITS)
    for chunk in chunk_units(md.units, size=60, overlap=10):
        assert any(chunk.text in u.text and chunk.section == u.section for u in md.units), chunk


# -- OpenDocument ------------------------------------------------------------------------------


def test_odt_headings_notes_tables_and_alt_text(tmp_path: Path) -> None:
    result = extract(docs.make_odt(tmp_path / "log.odt"), LIMITS)
    assert result.title == "Lighthouse Log"
    assert sections(result) == ["# Storms", "# Storms > ## Lamp maintenance"]
    assert unit_with(result, docs.ODT_STORMS) == (None, "# Storms")
    assert unit_with(result, "NOTE-ODT readings") == (None, "# Storms")
    assert unit_with(result, "Close the storm shutters") == (None, "# Storms")
    lamp = "# Storms > ## Lamp maintenance"
    assert unit_with(result, "Supply | TABLE-ODT\nParaffin | 40 litres") == (None, lamp)
    assert unit_with(result, "ALT-ODT drawing") == (None, lamp)
    assert in_order(text_of(result), docs.ODT_STORMS, "NOTE-ODT", docs.ODT_LAMP, "TABLE-ODT")


# -- EPUB ------------------------------------------------------------------------------------


def test_epub_chapters_in_spine_order_named_by_the_table_of_contents(tmp_path: Path) -> None:
    result = extract(docs.make_epub(tmp_path / "atlas.epub"), LIMITS)
    assert result.title == "The Railway Atlas"
    assert sections(result) == ["Steam", "Steam > ## Boilers", "Signals"]
    assert unit_with(result, "NOTE-EPUB coal") == (None, "Steam > ## Boilers")  # <aside> notes kept
    assert unit_with(result, "TABLE-EPUB | 12 bar") == (None, "Steam > ## Boilers")
    assert unit_with(result, "ALT-EPUB cutaway") == (None, "Steam > ## Boilers")
    assert in_order(text_of(result), docs.EPUB_STEAM, "TABLE-EPUB", docs.EPUB_SIGNALS)


def test_epub2_table_of_contents_with_a_doctype_names_the_chapters(tmp_path: Path) -> None:
    # The NCX and the XHTML 1.1 chapters start with a DOCTYPE: harmless, accepted, never loaded.
    result = extract(docs.make_epub2(tmp_path / "canal.epub"), LIMITS)
    assert result.title == "The Canal Companion"
    assert sections(result) == ["Locks", "Boats", "Boats > ## Narrowboats", "Boats > ## Barges"]
    assert unit_with(result, docs.EPUB2_BARGES) == (None, "Boats > ## Barges")
    assert not result.warnings


# -- Made by office programs -----------------------------------------------------------------


def test_documents_saved_by_office_programs_are_read_as_they_are() -> None:
    """Word's and PowerPoint's empty documents (their styles, theme, master and layouts hold no
    text) and a LibreOffice text, read where the packages that ship them are installed. The
    documents the other tests write start from the same Word and PowerPoint files."""
    for empty in (docs.word_document(), docs.powerpoint_deck()):
        result = extract(empty, LIMITS)
        assert (result.units, result.title, result.warnings) == ((), None, ()), empty
    result = extract(docs.libreoffice_text(), LIMITS)
    assert (sections(result), result.title, result.warnings) == ([None], None, ())
    text = text_of(result)
    # Text split by bookmarks and <text:s/> comes out whole; table rows are lines of cells.
    assert text.startswith("Table style 0 (rststyle-table-0) \u2013 the default table style\n")
    assert "rststyle-table-0 is the default style used by odf-odt writer. | Name all table styles" in text
    assert in_order(
        text, "Table style 0", "Table style 1 (rststyle-table-1)", "the \u201cclass\u201d directive"
    )


# -- HTML ------------------------------------------------------------------------------------


def test_html_keeps_the_article_and_drops_the_site_around_it(tmp_path: Path) -> None:
    path = tmp_path / "volcanoes.html"
    path.write_text(docs.html_page())
    result = extract(path, LIMITS)
    assert result.title == "Volcano Field Guide"
    assert sections(result) == [
        "# Volcanoes",  # the article's own <header>: its title and byline
        "# Volcanoes > ## Shield volcanoes",
        "# Volcanoes > ## Stratovolcanoes",
    ]
    text = text_of(result)
    assert "NOISE" not in text and "NOISE_SCRIPT" not in text
    assert in_order(text, "Volcanoes", "By the survey team", docs.HTML_SHIELD, docs.HTML_STRATO)
    strato = "# Volcanoes > ## Stratovolcanoes"
    assert unit_with(result, "Volcano | TABLE-HTML\nFuji | 3776 m") == (None, strato)
    assert unit_with(result, "[image: ALT-HTML Mount Fuji at dawn]") == (None, strato)
    assert "lava   flow\n  rate" in text  # <pre> verbatim


def test_html_page_content_named_like_chrome_is_kept() -> None:
    """Pages whose content sits in what the chrome heuristic looks for (found in review)."""
    from daemon.ingest.html import parse_document

    def page_text(body: str) -> tuple[str, list[str | None], list[str]]:
        units, _, warnings = parse_document(f"<html><body>{body}</body></html>".encode())
        return "\n".join(u.text for u in units), [u.section for u in units], warnings

    # ASP.NET and SharePoint wrap the whole body in one <form>.
    text, _, _ = page_text(
        "<form id='aspnetForm'><h1>Leave</h1><p>FORM-BODY text.</p><input name='q'></form>"
    )
    assert "FORM-BODY text." in text
    # A layout wrapper named like a sidebar holds the page; the real sidebar is still left out.
    text, _, _ = page_text(
        "<div class='page with-sidebar'><div class='left-sidebar'>NOISE links</div>"
        "<p>WRAPPED-BODY is the article, long enough to be most of the page's text.</p></div>"
    )
    assert "WRAPPED-BODY" in text and "NOISE" not in text
    # A privacy policy's own sections, and a heading whose id is "navigation".
    text, sections, _ = page_text(
        "<main><h1>Policy</h1><section id='cookies'><h2>Cookies</h2><p>COOKIE-SECTION text.</p></section>"
        "<section id='data-sharing'><p>SHARING-SECTION text.</p></section>"
        "<h2 id='navigation'>Navigation</h2><p>NAV-HEADED text about getting around.</p></main>"
    )
    assert "COOKIE-SECTION" in text and "SHARING-SECTION" in text
    assert sections[-1] == "# Policy > ## Navigation"
    # Inside <main> an <aside> is a note of the text; outside, a sidebar.
    text, _, _ = page_text(
        "<aside>SIDEBAR-NOISE</aside><main><p>Body.</p><aside class='admonition note'>"
        "<p>NOTE-ASIDE kept.</p></aside></main>"
    )
    assert "NOTE-ASIDE kept." in text and "SIDEBAR-NOISE" not in text
    # Paragraphs in a table cell stay apart.
    text, _, _ = page_text("<table><tr><td><p>First.</p><p>Second.</p></td><td>x<br>y</td></tr></table>")
    assert text == "First. Second. | x y"
    # Everything in what looks like chrome: read all of it, and say so.
    text, _, warnings = page_text(
        "<div class='sidebar'><p>ONLY-TEXT here.</p></div><div class='site-nav'>Second part.</div>"
        "<div class='top-menu'>Third part.</div>"
    )
    assert text.split() == ["ONLY-TEXT", "here.", "Second", "part.", "Third", "part."]
    assert warnings == ["the page's text is all in what looks like navigation or sidebars; read all of it"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("<p>café</p>".encode(), "café"),  # no declaration, valid UTF-8
        (b"<p>caf\xe9</p>", "café"),  # no declaration, not UTF-8: Windows-1252 as browsers do
        (b"<meta charset='iso-8859-1'><p>caf\xe9 \x80</p>", "café €"),  # WHATWG: latin-1 is cp1252
        (
            "<meta http-equiv='Content-Type' content='text/html; charset=koi8-r'><p>мир</p>".encode("koi8-r"),
            "мир",
        ),
        (b"\xef\xbb\xbf<p>caf\xc3\xa9</p>", "café"),
        ("\ufeff<p>café</p>".encode("utf-16-le"), "café"),
        (b'<?xml version="1.0" encoding="utf-8"?><html><body><p>caf\xc3\xa9</p></body></html>', "café"),
    ],
)
def test_html_encoding_is_detected_like_a_browser(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "page.htm"
    path.write_bytes(data)
    assert text_of(extract(path, LIMITS)) == expected


def test_html_larger_than_the_limit_is_cut_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "big.html"
    body = "".join(f"<h2>Part {i}</h2><p>Paragraph {i} of the long page.</p>" for i in range(40_000))
    path.write_text(f"<html><head><title>Long</title></head><body>{body}<p>THE-END</p></body></html>")
    size = path.stat().st_size
    result = extract(path, ExtractLimits(50 * MIB, 120, 1024 * MIB, max_html_bytes=MIB))
    assert result.title == "Long"
    assert "Paragraph 0 of the long page." in text_of(result)
    assert "THE-END" not in text_of(result)
    assert result.warnings == (
        f"HTML page is {size / MIB:.1f} MB; only its first 1.0 MB were read "
        "(raise daemon.max_html_mb to index all of it)",
    )
    whole = extract(path, LIMITS)
    assert "THE-END" in text_of(whole) and whole.warnings == ()


# -- reStructuredText ------------------------------------------------------------------------


def test_rst_sections_by_depth_with_sphinx_markup_read_as_text(tmp_path: Path) -> None:
    result = extract(_write(tmp_path / "bakery.rst", docs.RST_TEXT), LIMITS)
    assert sections(result) == [
        "# Bakery Operations",
        "# Bakery Operations > ## Dough",
        "# Bakery Operations > ## Dough > ### Ovens",
        "# Bakery Operations > ## Counter",
    ]
    text = text_of(result)
    assert "see the schedule." in text  # :ref:`the schedule <schedule>`
    assert "Literal block\n=============\nnot a heading" in text
    assert "Clean the oven stones every Friday." in text
    assert "RST-VERSIONADDED the rotating rack" in text
    assert "NOISE-TOCTREE-ENTRY" not in text and "System Message" not in text


def test_rst_never_includes_files_or_raw_output(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("RST-SECRET from another file\n")
    source = (
        f"Title\n=====\n\n.. include:: {secret}\n\n.. literalinclude:: {secret}\n\n"
        f".. csv-table:: Data\n   :file: {secret}\n\n.. raw:: html\n   :file: {secret}\n\n"
        ".. raw:: html\n\n   <b>RST-RAW</b>\n\nEnd.\n"
    )
    text = text_of(extract(_write(tmp_path / "hostile.rst", source), LIMITS))
    assert "RST-SECRET" not in text and "RST-RAW" not in text
    assert "End." in text


def test_rst_that_docutils_cannot_parse_is_indexed_as_plain_text(tmp_path: Path) -> None:
    source = "Title\n=====\n\n" + "word " * 50_000 + "\n"  # a line over docutils' length limit
    result = extract(_write(tmp_path / "long.rst", source), LIMITS)
    assert [u.section for u in result.units] == [None]
    assert result.units[0].text.startswith("Title\n=====")
    assert "indexed as plain text" in result.warnings[0]


# -- Markdown --------------------------------------------------------------------------------


def test_markdown_sections_follow_commonmark_headings(tmp_path: Path) -> None:
    result = extract(_write(tmp_path / "chess.md", docs.MD_TEXT), LIMITS)
    assert sections(result) == [
        None,
        "# Openings",
        "# Openings > ## Endgames",
        "# Openings > ## Endgames > ### Rook endings",
    ]
    assert result.units[0].text.startswith("---\ntitle: Chess notes\n---")
    assert "# not a heading: a comment in code" in result.units[1].text
    assert result.units[2].text == "Endgames\n--------\n\nKing and pawn endings turn on the opposition.\n"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("# A\ntext\n## B\nmore", [("# A", "# A\ntext"), ("# A > ## B", "## B\nmore")]),
        ("## Closed ##\nx", [("## Closed", "## Closed ##\nx")]),
        ("#hashtag\nx", [(None, "#hashtag\nx")]),
        ("    # indented code\nx", [(None, "    # indented code\nx")]),
        ("   # three spaces\nx", [("# three spaces", "   # three spaces\nx")]),
        ("```\n# code\n```\n# Real", [(None, "```\n# code\n```"), ("# Real", "# Real")]),
        ("~~~~\n# code\n~~~\n# still code\n~~~~", [(None, "~~~~\n# code\n~~~\n# still code\n~~~~")]),
        ("<!--\n# hidden\n-->\n# Shown", [(None, "<!--\n# hidden\n-->"), ("# Shown", "# Shown")]),
        ("Title\n=====\nx", [("# Title", "Title\n=====\nx")]),
        ("Two line\ntitle\n---\nx", [("## Two line title", "Two line\ntitle\n---\nx")]),
        ("para\n\n---\nafter", [(None, "para\n\n---\nafter")]),  # a thematic break
        ("- item\n---\nx", [(None, "- item\n---\nx")]),  # a list item is no setext title
        ("# A\n# B\nx", [("# A", "# A"), ("# B", "# B\nx")]),  # an empty section stays apart
        ("# A\n## B\nx", [("# A > ## B", "# A\n## B\nx")]),  # ... but goes with its first child
        ("# A\n### C\nx\n## B\ny", [("# A > ### C", "# A\n### C\nx"), ("# A > ## B", "## B\ny")]),
    ],
)
def test_markdown_scanner_cases(source: str, expected: list[tuple[str | None, str]]) -> None:
    assert [(path, text.rstrip("\n")) for path, text in markdown.split(source)] == expected


def test_markdown_scanner_is_linear_on_hostile_lines() -> None:
    # Patterns that make backtracking regular expressions quadratic; each must finish at once.
    for source in ("# a" + " " * 200_000 + "b", "#" * 200_000, "-" * 200_000 + "x", "`" * 200_000):
        assert markdown.split(source)


# -- the worker's isolation ----------------------------------------------------------------------

STANDALONE = ("units", "sections", "text", "markdown", "xmlsafe", "zipguard", "ooxml")
STANDALONE += ("pdf", "docx", "pptx", "odt", "epub", "html", "rst", "worker")
ALLOWED_IMPORTS = {"lxml", "docutils", "pypdf"}


@pytest.mark.parametrize("module", STANDALONE)
def test_format_modules_import_nothing_from_the_daemon(module: str) -> None:
    tree = ast.parse((INGEST / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue  # a sibling format module
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in ALLOWED_IMPORTS, f"{module} imports {name}"


def test_worker_loads_only_its_own_format_modules(tmp_path: Path) -> None:
    path = docs.make_docx(tmp_path / "orchard.docx")
    with path.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-P", str(WORKER_SCRIPT), "docx", str(1024 * MIB), "60"],
            stdin=stdin,
            capture_output=True,
            timeout=120,
            check=True,
        )
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    # (importlib.import_module bypasses -X importtime, so the docx module itself is not listed.)
    assert {"_embedd_formats.zipguard", "_embedd_formats.ooxml", "lxml.etree"} <= imported
    assert not {
        m for m in imported if m.split(".")[0] in ("daemon", "numpy", "structlog", "pypdf", "docutils")
    }
    assert b'"status": "ok"' in done.stdout


# -- versions ------------------------------------------------------------------------------------


def test_only_text_and_pdf_are_read_as_before_formats_existed() -> None:
    # Version 1 is what a store without versions recorded (text, or a PDF); any other is indexed
    # again: a Markdown file is split by its headings, an .html file no longer read as text.
    # Version 3 of the formats with headings: a chunk that is only a heading joins its text.
    assert extraction_version(Path("a.md")) == extraction_version(Path("B.MARKDOWN")) == 3
    assert extraction_version(Path("deck.pptx")) == 2
    assert {extraction_version(Path(f"x{suffix}")) for suffix in FORMATS if suffix != ".pdf"} == {2, 3}
    assert extraction_version(Path("notes.txt")) == extraction_version(Path("no-suffix")) == 1
    assert extraction_version(Path("scan.PDF")) == 1


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
