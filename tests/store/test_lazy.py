"""A read-only open makes row records only as they are read (``daemon.store.lazy``), and what it
hands out is exactly what the writer holds: rows, each source's rows, the keyword signatures,
the source codes, after a replayed journal too and in another writer's row order; and the
writer's keyword check at open takes the signatures the cache recorded where nothing changed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.store import signature as signature_module
from daemon.store.cache import cache_path
from daemon.store.entries import NewEntry, Row
from daemon.store.format import FileState, content_hash
from daemon.store.keyword import kw_path
from daemon.store.lazy import LazyGroups, LazyRows
from daemon.store.signature import signature, signatures
from daemon.store.snapshot import Snapshot
from daemon.store.store import Store
from tests.store.test_store import DIMS, make_entries, open_store, state


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "embeddings.json"


def _entries(source: str, n: int, tag: str = "") -> list[NewEntry]:
    """Chunks with sections and a title, so the signatures cover them."""
    return [
        NewEntry(e.content, e.page, e.chunk, e.hash, e.vector, e.timestamp,
                 f"# {source} > ## part {e.chunk % 2}" if e.chunk else None, f"{source} title")
        for e in make_entries(source, n, tag=tag)
    ]  # fmt: skip


def _fill(path: Path) -> None:
    with open_store(path) as store:
        for k in range(6):
            store.replace_source(f"inbox/f{k}.md", _entries(f"inbox/f{k}.md", 3 + k % 3), state(k))
        store.save()


def _changes(store: Store) -> None:
    """Every kind of change the journal replays: edit, new file, removal, renames."""
    store.replace_source("inbox/f0.md", _entries("inbox/f0.md", 5, tag="edited"), state(50))
    store.replace_source("inbox/new.md", _entries("inbox/new.md", 2), state(51))
    store.remove_source("inbox/f1.md")
    store.rename_source("inbox/f2.md", "archive/f2.md", state(52))
    store.rename_source("inbox/f3.md", "inbox/f4.md", state(53))  # onto a file it replaces


def _row(r: Row) -> tuple[object, ...]:
    return (r.id, r.content, r.source, r.page, r.chunk, r.hash, r.timestamp, r.extra, r.section, r.title)


def _view(snap: Snapshot) -> dict[str, object]:
    """What a search can see of a snapshot, row numbering left out."""
    assert snap.by_source is not None
    live = range(len(snap.rows)) if snap.alive is None else np.flatnonzero(snap.alive).tolist()
    codes, names = snap.source_codes
    return {
        "rows": sorted(_row(snap.rows[i]) for i in live),
        "vectors": sorted(snap.matrix[i].tobytes() for i in live),
        "groups": {s: [_row(r) for r in rows] for s, rows in sorted(snap.by_source.items())},
        "codes": [names[c] for c in codes.tolist()] == [r.source for r in snap.rows],
        "found": all(
            snap.live_row(r.source, r.chunk, r.hash) is not None
            for rows in snap.by_source.values()
            for r in rows
        ),
        "signatures": signatures(snap.by_source),
    }


def test_a_readonly_open_makes_a_record_only_for_a_row_that_is_read(path: Path) -> None:
    _fill(path)
    with Store.open_readonly(path) as store:
        assert store.loaded_via == "cache"
        snap = store.snapshot()
        rows = snap.rows
        assert isinstance(rows, LazyRows) and isinstance(snap.by_source, LazyGroups)
        assert store.count == len(rows) == 24 and rows.made == 0
        assert len(store.sources()) == 6 and rows.made == 0
        assert snap.sources_mask(lambda s: s.endswith("f2.md")).sum() == 5 and rows.made == 0
        entry = snap.entry(7)
        assert rows.made == 1 and entry.content == rows[7].content
        group = snap.by_source["inbox/f4.md"]
        assert [r.chunk for r in group] == [0, 1, 2, 3] and rows.made == 5
        assert signatures(snap.by_source) == {s: signature(g) for s, g in snap.by_source.items()}


def test_what_a_readonly_open_hands_out_is_what_the_writer_holds(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDD_JOURNAL_ABOVE_BYTES", "0")  # the changes go to the journal
    _fill(path)
    with open_store(path) as writer:
        _changes(writer)
        assert writer.save().journalled
        expected = _view(writer.snapshot())
        assert isinstance(writer.snapshot().rows, tuple)  # the writer's rows are made at open
        with Store.open_readonly(path) as ro:
            snap = ro.snapshot()
            assert isinstance(snap.rows, LazyRows) and snap.alive is not None  # replayed: rows died
            assert _view(snap) == expected
            assert expected["codes"] and expected["found"]
            assert set(ro.sources()) == set(writer.sources())


def test_the_cache_records_each_sources_signature_and_an_older_cache_is_signed_from_its_columns(
    path: Path,
) -> None:
    _fill(path)
    with open_store(path) as writer:
        expected = {s: signature(rows) for s, rows in writer.snapshot().by_source.items()}  # type: ignore[union-attr]
    with Store.open_readonly(path) as ro:
        by_source = ro.snapshot().by_source
        assert isinstance(by_source, LazyGroups)
        assert by_source.signatures() == expected
        assert ro._t.rows.made == 0  # type: ignore[attr-defined]  # the cache's signatures: no record made
    # A cache written before it recorded signatures.
    raw = cache_path(path).read_bytes()
    assert raw.count(b'"signatures":[') == 1
    with Store.open_readonly(path) as ro:
        by_source = ro.snapshot().by_source
        assert isinstance(by_source, LazyGroups)
        by_source._rows.cols.signatures = None
        assert by_source.signatures() == expected


def test_another_writers_row_order_is_grouped_and_signed_like_the_writers(path: Path) -> None:
    """Sources interleaved and chunks out of order, read by the generic parser (no cache)."""
    path.parent.mkdir(parents=True)
    order = [("b.md", 2), ("a.md", 1), ("b.md", 0), ("a.md", 0), ("b.md", 1), ("c.md", 0)]
    entries = []
    for source, chunk in order:
        text = f"{source} {chunk}"
        vector = np.full(DIMS, 0.5 + chunk, dtype=np.float32).tolist()
        meta = {"source": source, "chunk": chunk, "page": None, "hash": content_hash(text)}
        if chunk:
            meta["section"] = f"# {source}"
        entries.append({"id": f"{source}#{chunk}", "content": text, "metadata": meta, "embedding": vector})
    files = {s: FileState(1, 2, 3).to_json() for s in ("a.md", "b.md", "c.md")}
    doc = {"model": "m", "dimensions": DIMS, "files": files, "embeddings": entries}
    path.write_text(json.dumps(doc, indent=2))
    with Store.open_readonly(path) as ro:
        assert ro.loaded_via == "generic"
        snap = ro.snapshot()
        assert snap.by_source is not None
        eager: dict[str, list[Row]] = {}
        for r in sorted(snap.rows, key=lambda r: r.chunk):
            eager.setdefault(r.source, []).append(r)
        assert {s: [r.chunk for r in g] for s, g in snap.by_source.items()} == {
            "b.md": [0, 1, 2], "a.md": [0, 1], "c.md": [0],
        }  # fmt: skip
        lazy = LazyGroups(LazyRows(snap.rows.cols))  # type: ignore[attr-defined]
        assert lazy.signatures() == {s: signature(g) for s, g in eager.items()}
        codes, names = snap.source_codes
        assert [names[c] for c in codes.tolist()] == [s for s, _ in order]


def test_the_writers_keyword_check_takes_the_cache_signatures_but_signs_what_the_journal_changed(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDD_JOURNAL_ABOVE_BYTES", "0")
    _fill(path)
    with open_store(path) as writer:
        assert writer.keyword is not None
        behind = kw_path(path).read_bytes()  # the keyword sidecar before the change below
        writer.replace_source("inbox/f0.md", _entries("inbox/f0.md", 2, tag="zebrafish"), state(60))
        assert writer.save().journalled
    # A crash that left the journal written but the keyword sidecar behind it.
    kw_path(path).write_bytes(behind)
    signed: list[str] = []

    def sign(rows: Sequence[Row]) -> str:
        signed.append(rows[0].source)
        return signature(rows)

    monkeypatch.setattr(signature_module, "signature", sign)
    with capture_logs() as logs, open_store(path) as store:
        assert store.loaded_via == "cache" and store.keyword is not None
        hits = store.keyword.search('"zebrafish"', 10)
        assert sorted((h.source, h.chunk) for h in hits) == [("inbox/f0.md", 0), ("inbox/f0.md", 1)]
    synced = [e for e in logs if e["event"] == "keyword_index_sync"]
    assert [(e["remove"], e["index"]) for e in synced] == [(1, 1)]  # only the replayed source
    assert signed == ["inbox/f0.md"]  # the other five signed by the cache
