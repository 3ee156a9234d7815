"""Documents end to end: the real daemon indexes real .docx, .pptx, .odt, .epub, .html, .rst and
.md files (written by their libraries; saved by Word, PowerPoint and LibreOffice, read where
installed packages ship them; and pages from this machine's documentation in tests/data/formats),
and the store, search and export carry their structure. Every wait polls with a generous deadline."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import documents as docs
import orjson
import pytest
from support import Daemon, cli, entries_by_source, read_store, wait_for, write_config

from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
from daemon.query.rank import search_store
from daemon.store.format import content_hash
from daemon.store.store import Store

DATA = Path(__file__).resolve().parents[1] / "data" / "formats"


def wait_store(store_path: Path, sources: set[str]) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        store = read_store(store_path)
        return store if store is not None and sources <= set(store["files"]) else None

    return wait_for(probe, what=f"the store to hold {sorted(sources)}")


def structure(store: dict[str, Any], source: str) -> list[tuple[int | None, str | None]]:
    """(page, section) of the source's chunks in order, runs of equal ones collapsed."""
    out: list[tuple[int | None, str | None]] = []
    for entry in entries_by_source(store, source):
        key = (entry["metadata"]["page"], entry["metadata"].get("section"))
        if not out or out[-1] != key:
            out.append(key)
    return out


def joined(store: dict[str, Any], source: str) -> str:
    return "\n".join(e["content"] for e in entries_by_source(store, source))


def titles(store: dict[str, Any], source: str) -> set[str | None]:
    return {e["metadata"].get("title") for e in entries_by_source(store, source)}


@pytest.fixture
def embedder(default_model: Path) -> Iterator[LlamaEmbedder]:
    model = LlamaEmbedder(default_model, EmbedderSettings(threads=2))
    yield model
    model.close()


def test_documents_keep_their_structure_from_store_to_search(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str], embedder: LlamaEmbedder
) -> None:
    cfg = write_config(tmp_path, default_model)  # the default include: every format
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    docs.make_docx(inbox / "orchard.docx")
    docs.make_pptx(inbox / "review.pptx")
    docs.make_odt(inbox / "log.odt")
    docs.make_epub(inbox / "atlas.epub")
    (inbox / "volcanoes.html").write_text(docs.html_page())
    (inbox / "bakery.rst").write_text(docs.RST_TEXT)
    (inbox / "chess.md").write_text(docs.MD_TEXT)
    names = [
        "orchard.docx",
        "review.pptx",
        "log.odt",
        "atlas.epub",
        "volcanoes.html",
        "bakery.rst",
        "chess.md",
    ]
    daemon = Daemon(cfg, cli_env).ready()
    try:
        for name in names:
            daemon.wait_event("file_indexed", source=f"inbox/{name}")
        store = wait_store(store_path, {f"inbox/{n}" for n in names})
    finally:
        assert daemon.stop() == 0
    assert not daemon.events("file_skipped") and not daemon.events("file_warning")

    # The store: each chunk's page and section, in document order, and the document's title.
    assert structure(store, "inbox/orchard.docx") == [
        (None, None),
        (None, "# Planting"),
        (None, "# Planting > ## Soil"),
        (None, "# Pruning"),
        (None, "# Harvest"),
    ]
    assert titles(store, "inbox/orchard.docx") == {"Orchard Handbook"}
    assert structure(store, "inbox/review.pptx") == [
        (1, "# Quarterly Review"),
        (2, "# Revenue by region"),
        (4, "# Customer support"),
    ]
    assert structure(store, "inbox/log.odt") == [(None, "# Storms"), (None, "# Storms > ## Lamp maintenance")]
    assert structure(store, "inbox/atlas.epub") == [
        (None, "Steam"),
        (None, "Steam > ## Boilers"),
        (None, "Signals"),
    ]
    assert titles(store, "inbox/atlas.epub") == {"The Railway Atlas"}
    assert titles(store, "inbox/volcanoes.html") == {"Volcano Field Guide"}
    assert [s for _, s in structure(store, "inbox/bakery.rst")][-1] == "# Bakery Operations > ## Counter"
    assert [s for _, s in structure(store, "inbox/chess.md")] == [
        None,
        "# Openings",
        "# Openings > ## Endgames",
        "# Openings > ## Endgames > ### Rook endings",
    ]
    assert titles(store, "inbox/chess.md") == {None}  # Markdown declares none: no key at all
    assert all("title" not in e["metadata"] for e in entries_by_source(store, "inbox/chess.md"))
    for name, markers in {
        "orchard.docx": ["TABLE-PH", "NOTE-DOCX", "ALT-DOCX", docs.DOCX_PRUNING],
        "review.pptx": ["TABLE-REVENUE", docs.PPTX_REVENUE_NOTES, "ALT-PPTX"],
        "log.odt": ["TABLE-ODT", "NOTE-ODT", "ALT-ODT", docs.ODT_LAMP],
        "atlas.epub": ["TABLE-EPUB", "NOTE-EPUB", "ALT-EPUB", docs.EPUB_SIGNALS],
        "volcanoes.html": ["TABLE-HTML", "ALT-HTML", docs.HTML_SHIELD],
        "bakery.rst": ["RST-VERSIONADDED", "deck oven"],
    }.items():
        text = joined(store, f"inbox/{name}")
        assert all(m in text for m in markers), (name, [m for m in markers if m not in text])
        assert "NOISE" not in text, name

    # Search finds each topic in its document and says where in it.
    expected = {
        "when should I prune apple trees": ("inbox/orchard.docx", None, "# Pruning"),
        "delay at the northern warehouse": ("inbox/review.pptx", 2, "# Revenue by region"),
        "polishing the brass burner of the lamp": ("inbox/log.odt", None, "# Storms > ## Lamp maintenance"),
        "semaphore signals for train drivers": ("inbox/atlas.epub", None, "Signals"),
        "gentle volcanoes made of runny basalt lava": (
            "inbox/volcanoes.html",
            None,
            "# Volcanoes > ## Shield volcanoes",
        ),
        "how hot is the deck oven before baking": (
            "inbox/bakery.rst",
            None,
            "# Bakery Operations > ## Dough > ### Ovens",
        ),
        "king and pawn endgame opposition": ("inbox/chess.md", None, "# Openings > ## Endgames"),
    }
    with Store.open_readonly(store_path) as opened:
        for query, (source, page, section) in expected.items():
            hit = search_store(opened, embedder, query, 1)[0]
            assert (hit.source, hit.page, hit.section) == (source, page, section), (query, hit)
    shown = cli(
        ["search", "--config", str(cfg), "gentle volcanoes made of runny basalt lava", "-k", "1"], cli_env
    )
    assert shown.returncode == 0, shown.stderr
    assert 'in "Volcano Field Guide"  # Volcanoes > ## Shield volcanoes' in shown.stdout
    as_json = cli(["search", "--config", str(cfg), "--json", "semaphore signals", "-k", "1"], cli_env)
    result = json.loads(as_json.stdout)["results"][0]
    assert (result["section"], result["title"]) == ("Signals", "The Railway Atlas")

    # Export carries the structure too; verify sees nothing amiss.
    exported = cli(["export", "--config", str(cfg), "--format", "jsonl"], cli_env)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    deck = [line["metadata"] for line in lines if line["metadata"]["source"] == "inbox/review.pptx"]
    assert {(m["page"], m["section"], m["title"]) for m in deck} >= {
        (2, "# Revenue by region", "Quarterly Review")
    }
    assert cli(["verify", "--config", str(cfg)], cli_env).returncode == 0


def test_real_world_documents(tmp_path: Path, default_model: Path, cli_env: dict[str, str]) -> None:
    """Documents made by the programs people use: Word's and PowerPoint's own (empty) documents, a
    LibreOffice text, the same saved with a password, an EPUB 2 book, and documentation pages."""
    cfg = write_config(tmp_path, default_model)
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    for path in DATA.iterdir():
        if not path.name.startswith(("LICENSE", "README")):
            shutil.copy(path, inbox / path.name)
    shutil.copy(docs.word_document(), inbox / "word-empty.docx")
    shutil.copy(docs.powerpoint_deck(), inbox / "powerpoint-empty.pptx")
    shutil.copy(docs.libreoffice_text(), inbox / "libreoffice-tables.odt")
    docs.make_epub2(inbox / "canal-epub2.epub")
    word = docs.encrypt_docx(docs.make_docx(tmp_path / "orchard.docx"))
    (inbox / "word-password.docx").write_bytes(word)
    (inbox / "libreoffice-password.odt").write_bytes(docs.encrypt_odt(docs.libreoffice_text()))
    empty = {"word-empty.docx", "powerpoint-empty.pptx"}
    readable = empty | {
        "libreoffice-tables.odt",
        "canal-epub2.epub",
        "rustdoc-std-collections.html",
        "cmake-if.rst",
        "nodejs-path.md",
    }
    locked = {"word-password.docx", "libreoffice-password.odt"}
    daemon = Daemon(cfg, cli_env).ready()
    try:
        indexed = {name: daemon.wait_event("file_indexed", source=f"inbox/{name}")[0] for name in readable}
        reasons = {
            name: daemon.wait_event("file_skipped", path=str(inbox / name))[0]["reason"] for name in locked
        }
        store = wait_store(store_path, {f"inbox/{n}" for n in readable})
    finally:
        assert daemon.stop() == 0
    assert all(reason.startswith("encrypted (a password-protected") for reason in reasons.values()), reasons
    assert not daemon.events("file_warning")

    # Word's and PowerPoint's empty documents: read without error, no text, recorded as indexed.
    assert {name: indexed[name]["chunks"] for name in empty} == dict.fromkeys(empty, 0)
    assert not any(entries_by_source(store, f"inbox/{name}") for name in empty)
    odt = joined(store, "inbox/libreoffice-tables.odt")
    assert "Table style 0 (rststyle-table-0) \u2013 the default table style" in odt
    assert "used by odf-odt writer. | Name all table styles with prefix" in odt
    assert structure(store, "inbox/libreoffice-tables.odt") == [(None, None)]
    assert structure(store, "inbox/canal-epub2.epub") == [
        (None, "Locks"),
        (None, "Boats"),
        (None, "Boats > ## Narrowboats"),
        (None, "Boats > ## Barges"),
    ]  # an EPUB 2 whose NCX has a DOCTYPE names its chapters
    assert titles(store, "inbox/canal-epub2.epub") == {"The Canal Companion"}
    html = joined(store, "inbox/rustdoc-std-collections.html")
    assert "Rust\u2019s standard collection library" in html
    assert not any(chrome in html for chrome in ("Copy item path", "Settings", "Keyboard Shortcuts", "§"))
    assert titles(store, "inbox/rustdoc-std-collections.html") == {"std::collections - Rust"}
    assert (None, "# if > ## Condition Syntax > ### Logic Operators") in structure(
        store, "inbox/cmake-if.rst"
    )
    assert (None, "# Path > ## Windows vs. POSIX") in structure(store, "inbox/nodejs-path.md")


def test_a_store_from_before_keeps_working_and_only_markdown_is_indexed_again(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    inbox, store_path = tmp_path / "inbox", tmp_path / "data" / "embeddings.json"
    (inbox / "notes.txt").write_text("Plain notes about the harbour survey, which starts in May.\n")
    (inbox / "chess.md").write_text(docs.MD_TEXT)
    page = (
        "<html><head><title>Tides</title></head><body><h1>Tides</h1><p>Spring tides follow the new moon.</p>"
    )
    (inbox / "tides.html").write_text(page)
    daemon = Daemon(cfg, cli_env).ready()
    try:
        wait_store(store_path, {"inbox/notes.txt", "inbox/chess.md", "inbox/tides.html"})
    finally:
        assert daemon.stop() == 0
    # Make it the store an embedd from before this change wrote: no extraction versions in
    # "files", no sections or titles, Markdown and HTML (which an `include` could select) read
    # as one piece of plain text each, no sidecar cache.
    old = orjson.loads(store_path.read_bytes())
    for record in old["files"].values():
        record.pop("extraction", None)
    for source, text in (("inbox/chess.md", docs.MD_TEXT), ("inbox/tides.html", page)):
        first = next(e for e in old["embeddings"] if e["metadata"]["source"] == source)
        old["embeddings"] = [e for e in old["embeddings"] if e["metadata"]["source"] != source]
        meta = {k: v for k, v in first["metadata"].items() if k not in ("section", "title")}
        old["embeddings"].append(
            dict(first, content=text.strip(), metadata=meta | {"hash": content_hash(text.strip())})
        )
    old["count"] = len(old["embeddings"])
    store_path.write_bytes(orjson.dumps(old))
    store_path.with_name(store_path.name + ".idx").unlink(missing_ok=True)
    txt_before = [e for e in old["embeddings"] if e["metadata"]["source"] == "inbox/notes.txt"]

    stale = cli(["verify", "--config", str(cfg), "--json"], cli_env)
    assert [(d["kind"], d["source"]) for d in json.loads(stale.stdout)["differences"]] == [
        ("stale_extraction", "inbox/chess.md"),
        ("stale_extraction", "inbox/tides.html"),
    ]
    daemon = Daemon(cfg, cli_env).ready()
    try:
        assert daemon.wait_event("extraction_upgraded")[0]["files"] == 2
        daemon.wait_event("file_indexed", source="inbox/chess.md")
        daemon.wait_event("file_indexed", source="inbox/tides.html")
        # A text file renamed to .md is read as Markdown now: indexed again, not just renamed.
        (inbox / "notes.txt").rename(inbox / "notes.md")
        removed = daemon.wait_event("file_removed", source="inbox/notes.txt")[0]
        assert "read as another format" in removed["reason"]
        daemon.wait_event("file_indexed", source="inbox/notes.md")
        store = wait_store(store_path, {"inbox/notes.md"})
    finally:
        assert daemon.stop() == 0
    assert daemon.proc.returncode == 0  # the old store opened: no exit 5, nothing moved aside
    assert not list(store_path.parent.glob("*.bak-*"))
    assert not daemon.events_matching("file_indexed", source="inbox/notes.txt")
    assert [s for _, s in structure(store, "inbox/chess.md")][1] == "# Openings"
    assert joined(store, "inbox/tides.html") == "Tides\n\nSpring tides follow the new moon."
    assert titles(store, "inbox/tides.html") == {"Tides"}
    assert store["files"]["inbox/chess.md"]["extraction"] == 3  # version 3: no heading-only chunks
    assert store["files"]["inbox/notes.md"]["extraction"] == 3
    assert txt_before and txt_before[0]["content"] == entries_by_source(store, "inbox/notes.md")[0]["content"]
    assert cli(["verify", "--config", str(cfg)], cli_env).returncode == 0
