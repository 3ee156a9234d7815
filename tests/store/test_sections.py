"""Sections, titles and extraction versions in the store: written only when there are, read back
by every way the store is read (our layout, the cache, another layout), and left alone on
entries that have none, so stores written before them keep their exact bytes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from daemon.query.hit import Hit, render_hits
from daemon.store.cache import cache_path
from daemon.store.format import FileState, content_hash
from daemon.store.store import Fingerprint, NewEntry, Store

DIMS = 4
FP = Fingerprint("cd" * 32, "mean", True, 500, 50)


def entry(text: str, chunk: int, *, section: str | None = None, title: str | None = None) -> NewEntry:
    vector = np.arange(DIMS, dtype=np.float32) + chunk
    return NewEntry(text, None, chunk, content_hash(text), vector, 1_764_100_000_000, section, title)


def open_store(path: Path) -> Store:
    return Store.open(path, model="m", dimensions=DIMS, fingerprint=FP)


def read_all(store: Store) -> list[tuple[str, str | None, str | None, dict[str, object]]]:
    return [(e.content, e.section, e.title, e.metadata) for e in store.iter_entries()]


def test_sections_and_titles_round_trip_every_way_the_store_is_read(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    with open_store(path) as store:
        store.replace_source(
            "in/guide.html",
            [
                entry("Intro", 0, title="Guide"),
                entry("Install on Linux", 1, section="# Install > ## Linux", title="Guide"),
            ],
            FileState(1, 2, 3),
        )
        store.replace_source("in/plain.txt", [entry("plain text", 0)], FileState(4, 5, 6, extraction=1))
        store.replace_source("in/notes.md", [entry("# Notes", 0, section="# Notes")], FileState(7, 8, 9, 2))
        store.save()
        expected = read_all(store)
    assert expected[1] == (
        "Install on Linux",
        "# Install > ## Linux",
        "Guide",
        {"source": "in/guide.html", "page": None, "chunk": 1, "hash": content_hash("Install on Linux")}
        | {"section": "# Install > ## Linux", "title": "Guide"},
    )
    doc = json.loads(path.read_bytes())
    metas = [e["metadata"] for e in doc["embeddings"]]
    assert list(metas[1]) == ["source", "page", "chunk", "hash", "section", "title"]
    assert list(metas[2]) == ["source", "page", "chunk", "hash"]  # none: no key, not null
    assert doc["files"] == {
        "in/guide.html": {"size": 1, "mtime_ns": 2, "inode": 3},
        "in/notes.md": {"size": 7, "mtime_ns": 8, "inode": 9, "extraction": 2},
        "in/plain.txt": {"size": 4, "mtime_ns": 5, "inode": 6},
    }

    with Store.open_readonly(path) as cached:
        assert cached.loaded_via == "cache" and read_all(cached) == expected
        assert cached.file_state("in/notes.md") == FileState(7, 8, 9, 2)
    cache_path(path).unlink()
    with Store.open_readonly(path) as parsed:
        assert parsed.loaded_via == "parse" and read_all(parsed) == expected
    path.write_text(json.dumps(doc, indent=2))  # another tool's layout
    with Store.open_readonly(path) as generic:
        assert generic.loaded_via == "generic" and read_all(generic) == expected
        assert all(e.extra is None for e in generic.iter_entries())


def test_a_cache_of_an_older_format_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    with open_store(path) as store:
        store.replace_source("in/a.md", [entry("# A", 0, section="# A")], FileState(1, 2, 3, 2))
        store.save()
    raw = cache_path(path).read_bytes()
    assert raw.startswith(b"EMBDIDX2")
    # An older embedd's cache (format 1, without sections in its first versions) must be
    # ignored, never read as "no sections".
    cache_path(path).write_bytes(b"EMBDIDX1" + raw[8:])
    with Store.open_readonly(path) as store:
        assert store.loaded_via == "parse"
        assert [e.section for e in store.iter_entries()] == ["# A"]


def test_entries_without_sections_keep_their_bytes(tmp_path: Path) -> None:
    """A store written before sections existed is read and rewritten byte for byte."""
    path = tmp_path / "s.json"
    with open_store(path) as store:
        store.replace_source("in/a.txt", [entry("alpha", 0), entry("beta", 1)], FileState(1, 2, 3))
        store.save()
    before = path.read_bytes()
    with open_store(path) as store:
        store.replace_source("in/b.txt", [entry("gamma", 0)], FileState(4, 5, 6))
        store.remove_source("in/b.txt")
        store.save()
    after = path.read_bytes()
    assert before.split(b"\n")[1:] == after.split(b"\n")[1:]  # every entry line; the header has times


def test_a_changed_section_rewrites_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    with open_store(path) as store:
        store.replace_source("in/a.md", [entry("text", 0, section="# Old")], FileState(1, 2, 3, 2))
        store.save()
        store.replace_source("in/a.md", [entry("text", 0, section="# New")], FileState(1, 2, 3, 2))
        assert store.dirty
        stats = store.save()
        assert stats.entries_written == 1
    with Store.open_readonly(path) as reread:
        assert [e.section for e in reread.iter_entries()] == ["# New"]


def test_a_foreign_non_text_section_is_kept_as_another_writers_key(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    vector = [0.5] * DIMS
    doc = {
        "version": "1.0",
        "model": "m",
        "dimensions": DIMS,
        "embeddings": [
            {"id": "x", "content": "c", "metadata": {"source": "a", "section": 7}, "embedding": vector},
        ],
    }
    path.write_bytes(orjson.dumps(doc))
    with Store.open_readonly(path) as store:
        (e,) = store.iter_entries()
        assert e.section is None and e.extra == {"section": 7} and e.metadata["section"] == 7


@pytest.mark.parametrize(
    ("section", "title", "line"),
    [
        (None, None, None),
        ("# A > ## B", None, "    in # A > ## B"),
        ("Chapter 2", "The Atlas", '    in "The Atlas"  Chapter 2'),
    ],
)
def test_hits_carry_and_show_section_and_title(
    section: str | None, title: str | None, line: str | None
) -> None:
    hit = Hit(1, 0.5, "id", "in/x", 3, 0, "the text", 7, section=section, title=title)
    doc = hit.to_json()
    assert ("section" in doc, "title" in doc) == (section is not None, title is not None)
    assert Hit.from_json(doc) == hit
    assert Hit.from_json(replace(hit, section=None, title=None).to_json()).section is None

    class Out:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

    out = Out()
    render_hits([hit], out)  # type: ignore[arg-type]
    lines = out.text.splitlines()
    assert lines[0] == " 1. 0.5000  in/x  page 3  chunk 0"
    assert lines[1:] == ([line] if line else []) + ["    the text"]
