"""Extraction throughput per format: MB/s and pages/s, PDF beside the others.

Writes one document of ``--pages`` pages in each format with the libraries people's documents
come from (fpdf2, python-docx, python-pptx, odfpy, ebooklib; the dev extra) and as plain HTML,
reST and Markdown, then times ``daemon.ingest.extract.extract`` on it: exactly what the
daemon runs per file, so for every format but text and Markdown that includes starting the
sandboxed worker process. The worker's start alone is timed too (an empty text file through
the worker), and so is the parse alone (the format module called in this process), so the
table shows where the time goes.

A page is a PDF page or a slide; for the formats without pages it is about 2,000 characters of
text (a printed page) under a heading. Text is generated English from ``bench/corpus.py``.
"file MB/s" divides the file's size (zip packages are compressed), "text MB/s" the text
extracted, by the wall time of ``extract``.

    python bench/extract_formats.py                 # 200 pages per format, median of 3
    python bench/extract_formats.py --quick         # 10 pages, one run: checks that it works
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import sentences
from machine import describe

from daemon.errors import ExtractError
from daemon.ingest import docx, epub, html, markdown, odt, pdf, pptx, rst
from daemon.ingest.extract import ExtractLimits, extract, format_of
from daemon.ingest.sandbox import SandboxLimits, run_worker

MIB = 1024 * 1024
PAGE_CHARS = 2000
LIMITS = ExtractLimits(
    max_bytes=1024 * MIB, timeout_s=600, memory_bytes=4096 * MIB, max_html_bytes=1024 * MIB
)


@dataclass(frozen=True)
class Page:
    heading: str
    paragraphs: list[str]


def pages(n: int) -> list[Page]:
    """``n`` pages of about ``PAGE_CHARS`` characters: a heading and paragraphs of sentences."""
    supply: Iterator[str] = iter(sentences(seed=77) * (1 + n * PAGE_CHARS // 1_500_000))
    out = []
    for i in range(n):
        paragraphs, size = [], 0
        while size < PAGE_CHARS:
            paragraph = " ".join(next(supply) for _ in range(4))
            paragraphs.append(paragraph)
            size += len(paragraph)
        out.append(Page(f"Section {i + 1}: {paragraphs[0].split(' ', 3)[-1][:40]}", paragraphs))
    return out


def write_pdf(path: Path, doc: list[Page]) -> None:
    from fpdf import FPDF

    out = FPDF()
    out.set_font("helvetica", size=10)
    for page in doc:
        out.add_page()
        out.multi_cell(0, 5, page.heading + "\n\n" + "\n\n".join(page.paragraphs))
    out.output(str(path))


def write_docx(path: Path, doc: list[Page]) -> None:
    import docx as python_docx

    out = python_docx.Document()
    for i, page in enumerate(doc):
        out.add_heading(page.heading, level=1 if i % 5 == 0 else 2)
        for paragraph in page.paragraphs:
            out.add_paragraph(paragraph)
        if i % 10 == 0:
            table = out.add_table(rows=3, cols=3)
            for cell in table._cells:
                cell.text = f"cell of page {i + 1}"
        out.add_page_break()
    out.save(str(path))


def write_pptx(path: Path, doc: list[Page]) -> None:
    from pptx import Presentation

    deck = Presentation()
    for page in doc:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = page.heading
        body = slide.placeholders[1].text_frame
        body.text = page.paragraphs[0][:200]
        for paragraph in page.paragraphs[1:3]:
            body.add_paragraph().text = paragraph[:200]
        slide.notes_slide.notes_text_frame.text = " ".join(page.paragraphs[3:])
    deck.save(str(path))


def write_odt(path: Path, doc: list[Page]) -> None:
    from odf.opendocument import OpenDocumentText
    from odf.text import H, P

    out = OpenDocumentText()
    for i, page in enumerate(doc):
        out.text.addElement(H(outlinelevel=1 if i % 5 == 0 else 2, text=page.heading))
        for paragraph in page.paragraphs:
            out.text.addElement(P(text=paragraph))
    out.save(str(path))


def html_of(doc: Sequence[Page]) -> str:
    body = "".join(
        f"<h{1 if i % 5 == 0 else 2}>{p.heading}</h{1 if i % 5 == 0 else 2}>"
        + "".join(f"<p>{x}</p>" for x in p.paragraphs)
        for i, p in enumerate(doc)
    )
    nav = "<nav>" + "".join(f"<a href='#{i}'>link {i}</a>" for i in range(50)) + "</nav>"
    return (
        f"<!DOCTYPE html><html><head><title>Bench</title></head><body>{nav}<main>{body}</main></body></html>"
    )


def write_epub(path: Path, doc: list[Page]) -> None:
    from ebooklib import epub as ebooklib_epub

    book = ebooklib_epub.EpubBook()
    book.set_identifier("bench")
    book.set_title("Bench")
    book.set_language("en")
    chapters = []
    for c in range(0, len(doc), 10):  # ten pages a chapter
        chapter = ebooklib_epub.EpubHtml(title=f"Chapter {c // 10 + 1}", file_name=f"c{c // 10}.xhtml")
        chapter.content = html_of(doc[c : c + 10])
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = tuple(chapters)
    book.add_item(ebooklib_epub.EpubNcx())
    book.add_item(ebooklib_epub.EpubNav())
    book.spine = ["nav", *chapters]
    ebooklib_epub.write_epub(str(path), book)


def write_html(path: Path, doc: list[Page]) -> None:
    path.write_text(html_of(doc))


def write_rst(path: Path, doc: list[Page]) -> None:
    parts = []
    for i, page in enumerate(doc):
        parts.append(page.heading + "\n" + ("=" if i % 5 == 0 else "-") * len(page.heading) + "\n")
        parts += [p + "\n" for p in page.paragraphs]
    path.write_text("\n".join(parts))


def write_md(path: Path, doc: list[Page]) -> None:
    path.write_text(
        "\n\n".join(
            ("# " if i % 5 == 0 else "## ") + p.heading + "\n\n" + "\n\n".join(p.paragraphs)
            for i, p in enumerate(doc)
        )
    )


def streamed(parse: Callable[[BinaryIO], object]) -> Callable[[Path], object]:
    """A format module's ``parse`` of an open file, as a function of the path."""

    def run(path: Path) -> object:
        with path.open("rb") as stream:
            return parse(stream)

    return run


# format -> (file name, writer, the format module's parse on the path, in this process)
FORMATS: dict[str, tuple[str, Callable[[Path, list[Page]], None], Callable[[Path], object]]] = {
    "pdf": ("doc.pdf", write_pdf, streamed(pdf.parse)),
    "docx": ("doc.docx", write_docx, streamed(docx.parse)),
    "pptx": ("doc.pptx", write_pptx, streamed(pptx.parse)),
    "odt": ("doc.odt", write_odt, streamed(odt.parse)),
    "epub": ("doc.epub", write_epub, streamed(epub.parse)),
    "html": ("doc.html", write_html, streamed(lambda s: html.parse(s, LIMITS.max_html_bytes))),
    "rst": ("doc.rst", write_rst, lambda p: rst.parse(p.read_bytes())),
    "md": ("doc.md", write_md, lambda p: markdown.parse(p.read_bytes())),
}


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker_start(folder: Path, fmt: str, repeat: int) -> float:
    """Seconds to start the sandboxed worker for ``fmt`` (its imports) and hear back about an
    empty file, which every parser answers at once."""
    empty = folder / "empty"
    empty.write_bytes(b"")
    limits = SandboxLimits(LIMITS.timeout_s, LIMITS.memory_bytes, LIMITS.max_html_bytes)

    def once() -> None:
        # "empty file, not a Word document ...": the answer we time.
        with empty.open("rb") as f, contextlib.suppress(ExtractError):
            run_worker(empty, f.fileno(), fmt, limits)

    return timed(once, repeat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=200, help="pages (slides) per document (default 200)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per format; the median is shown (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="10 pages, one run: just check that it works")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset")
    args = parser.parse_args(argv)
    n, repeat = (10, 1) if args.quick else (args.pages, args.repeat)
    chosen = [f for f in args.formats.split(",") if f]
    doc = pages(n)
    print(describe())
    print(
        f"{n} pages per document, median of {repeat} run(s); "
        f"a page is a PDF page, a slide, or ~{PAGE_CHARS} characters\n"
    )
    with tempfile.TemporaryDirectory(prefix="embedd-bench-") as tmp:
        folder = Path(tmp)
        print(
            "| format | file MB | text MB | pages | extract s | file MB/s | text MB/s | pages/s "
            "| worker start s | parse only s |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in chosen:
            file_name, write, parse_only = FORMATS[name]
            path = folder / file_name
            write(path, doc)
            size = path.stat().st_size / MIB
            result = extract(path, LIMITS)  # also warms the page cache
            text = sum(len(u.text) for u in result.units) / MIB
            full = timed(lambda path=path: extract(path, LIMITS), repeat)  # type: ignore[misc]
            alone = timed(lambda parse=parse_only, path=path: parse(path), repeat)  # type: ignore[misc]
            sandboxed = format_of(path).sandboxed
            start = f"{worker_start(folder, format_of(path).name, max(repeat, 3)):.3f}" if sandboxed else "-"
            print(
                f"| {name} | {size:.2f} | {text:.2f} | {n} | {full:.3f} | {size / full:.2f} "
                f"| {text / full:.2f} | {n / full:.0f} | {start} | {alone:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
