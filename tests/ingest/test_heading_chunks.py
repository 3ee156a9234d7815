"""No chunk is only a heading: real documents of every format with headings, and Markdown cases."""

from __future__ import annotations

from pathlib import Path

import documents as docs
import pytest

from daemon.ingest import markdown
from daemon.ingest.chunker import Chunk, _is_heading_only, chunk_units
from daemon.ingest.extract import ExtractLimits, TextUnit, extract

MIB = 1024 * 1024
LIMITS = ExtractLimits(max_bytes=50 * MIB, timeout_s=120, memory_bytes=1024 * MIB)


def heading_only(chunks: list[Chunk]) -> list[Chunk]:
    return [c for c in chunks if _is_heading_only(c.text, c.section)]


def md_chunks(text: str, size: int = 500) -> list[Chunk]:
    return chunk_units(markdown.units_of(text), size=size, overlap=min(50, size // 4))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda d: docs.make_docx(d / "orchard.docx"),
        lambda d: docs.make_odt(d / "notes.odt"),
        lambda d: docs.make_epub(d / "book.epub"),
        lambda d: _write(d / "volcano.html", docs.html_page()),
        lambda d: _write(d / "bakery.rst", docs.RST_TEXT),
        lambda d: _write(d / "chess.md", docs.MD_TEXT),
    ],
    ids=["docx", "odt", "epub", "html", "rst", "md"],
)
@pytest.mark.parametrize("size", [40, 80, 500])
def test_real_documents_give_no_heading_only_chunk(tmp_path: Path, make: object, size: int) -> None:
    extracted = extract(make(tmp_path), LIMITS)  # type: ignore[operator]
    # The check recognises the headings these documents have (it is not vacuous) ...
    assert any(u.section for u in extracted.units)
    chunks = chunk_units(extracted.units, size=size, overlap=size // 5)
    assert chunks and not heading_only(chunks), [c.text for c in heading_only(chunks)]
    # ... and nothing the document says is lost by joining: every unit's words are in the chunks.
    words = {w for c in chunks for w in c.text.split()}
    assert {w for u in extracted.units for w in u.text.split()} <= words


def test_the_detector_sees_the_heading_only_pieces_the_splitter_makes() -> None:
    # A heading above a paragraph longer than the chunk size: the splitter alone cuts it off.
    units = markdown.units_of("# Title\n\n" + "word " * 150)
    from daemon.ingest.chunker import _split

    assert _is_heading_only(_split(units[0].text, 500, 50)[0], units[0].section)
    chunks = chunk_units(units, size=500, overlap=50)
    assert chunks[0].text.startswith("# Title\n\nword word")
    assert chunks[0].section == "# Title"
    assert all(c.text in units[0].text for c in chunks)


def test_an_empty_section_joins_the_next_and_keeps_its_path() -> None:
    chunks = md_chunks("## Install\n\n### Linux\n\napt install it\n\n## Empty\n\n## Next\n\nbody text\n")
    assert [(c.text, c.section) for c in chunks] == [
        ("## Install\n### Linux\n\napt install it", "## Install > ### Linux"),
        ("## Empty\n\n## Next\n\nbody text", "## Next"),
    ]


def test_a_trailing_heading_joins_the_chunk_before_and_a_lone_heading_stays() -> None:
    chunks = md_chunks("## Usage\n\nrun it\n\n## See also\n")
    assert [(c.text, c.section) for c in chunks] == [("## Usage\n\nrun it\n\n## See also", "## Usage")]
    assert [c.text for c in md_chunks("# Only a title\n")] == ["# Only a title"]


def test_heading_only_pieces_never_join_across_pages() -> None:
    units = [TextUnit("Revenue", 1, "# Revenue"), TextUnit("Costs went down", 2, "# Costs")]
    chunks = chunk_units(units, size=500, overlap=50)
    assert [(c.text, c.page) for c in chunks] == [("Revenue", 1), ("Costs went down", 2)]


def test_text_that_merely_mentions_the_heading_is_kept_as_it_is() -> None:
    assert not _is_heading_only("Install the package", "## Install")
    assert _is_heading_only("Install\n=======", "# Install")
    assert not _is_heading_only("plain text", None)
