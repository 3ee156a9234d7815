"""Texts read from the sidecar cache instead of held as strings; the cache's layout; the row indexes."""

from __future__ import annotations

import gc
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import FingerprintMismatchError
from daemon.store import io as store_io
from daemon.store import store as store_module
from daemon.store.cache import END, cache_path
from daemon.store.entries import NewEntry
from daemon.store.format import Fingerprint, content_hash
from daemon.store.rows import RowTable, by_source
from daemon.store.store import Store
from daemon.store.texts import Texts, text_of, write_texts
from tests.store.test_store import DIMS, make_entries, open_store, snapshot, state


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "embeddings.json"


def _fill(path: Path, files: int = 4, chunks: int = 3) -> list[tuple[object, ...]]:
    with open_store(path) as store:
        for k in range(files):
            # Non-ASCII text, so byte offsets and character offsets differ.
            texts = [f"f{k} chunk {i} é ✓ {'x' * i}" for i in range(chunks)]
            entries = [
                NewEntry(text, None, i, content_hash(text), e.vector, e.timestamp)
                for i, (text, e) in enumerate(zip(texts, make_entries(f"in/f{k}.md", chunks), strict=True))
            ]
            store.replace_source(f"in/f{k}.md", entries, state(k))
        store.save()
        return snapshot(store)


def _text_refs_in_memory(store: Store) -> int:
    return sum(isinstance(r.text, str) for r in store._t.rows)


def _open_idx_descriptors(under: Path) -> list[str]:
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(under)) and ".idx" in target:
            out.append(target)
    return out


# ----- Texts and write_texts -----


def test_texts_decode_each_string_and_write_copies_runs() -> None:
    words = ["alpha", "", "βeta ✓", "gamma" * 100]
    texts = Texts.of(words)
    assert list(texts) == words and len(texts) == 4 and texts[-1] == words[-1]
    assert texts[1:3] == words[1:3]
    with pytest.raises(IndexError):
        texts[4]
    # A mix of own strings and runs of another Texts (in order, out of order, repeated).
    refs = [(texts, 0), (texts, 1), "own", (texts, 3), (texts, 2), (texts, 2), "ü"]
    written: list[bytes] = []
    offsets = write_texts(written.append, refs)
    blob = b"".join(written)
    expected = [text_of(r) for r in refs]
    assert blob == "".join(expected).encode()
    assert [blob[a:b].decode() for a, b in itertools.pairwise(offsets.tolist())] == expected
    # The two leading texts went out as one run of bytes, not one write each.
    assert written[0] == b"alpha"


def test_texts_in_a_file_read_there_and_refuse_once_closed(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"HEADERonetwo")
    fd = os.open(f, os.O_RDONLY)
    try:
        texts = Texts.in_file(fd, 6, np.array([0, 3, 6], dtype=np.int64))
    finally:
        os.close(fd)  # the Texts holds its own descriptor
    assert list(texts) == ["one", "two"]
    texts.close()
    with pytest.raises(ValueError, match="closed"):
        texts[0]


# ----- the store reads its texts from the cache -----


def test_texts_come_from_the_cache_after_a_warm_and_a_cold_open(path: Path) -> None:
    expected = _fill(path)
    with open_store(path) as warm:
        assert warm.loaded_via == "cache"
        assert _text_refs_in_memory(warm) == 0
        assert snapshot(warm) == expected
    cache_path(path).unlink()
    with open_store(path) as cold:
        # Parsed from the JSON, then read back from the cache the open wrote.
        assert cold.loaded_via == "parse"
        assert _text_refs_in_memory(cold) == 0
        assert snapshot(cold) == expected
    assert not _open_idx_descriptors(path.parent)
    with Store.open_readonly(path) as reader:
        assert reader.loaded_via == "cache" and snapshot(reader) == expected
    assert not _open_idx_descriptors(path.parent)


def test_a_fold_moves_every_text_to_the_new_cache_and_lets_the_old_one_go(path: Path) -> None:
    _fill(path)
    store = open_store(path)
    try:
        store.replace_source("in/new.md", make_entries("in/new.md", 2), state(9))
        store.remove_source("in/f1.md")
        assert _text_refs_in_memory(store) == 2  # the new file's chunks, until a fold
        store.fold()
        assert _text_refs_in_memory(store) == 0
        # One cache file open (the new one, under its own name), not the deleted old one.
        held = _open_idx_descriptors(path.parent)
        assert held == [str(cache_path(path))]
        expected = snapshot(store)
    finally:
        store.close()
    assert not _open_idx_descriptors(path.parent)
    with open_store(path) as again:
        assert again.loaded_via == "cache" and snapshot(again) == expected
    assert any(e[1].startswith("in/new.md chunk") for e in expected)


def test_a_snapshot_still_reads_its_texts_after_a_fold_and_a_change(path: Path) -> None:
    _fill(path)
    with open_store(path) as store:
        snap = store.snapshot()
        before = [snap.entry(i).content for i in range(len(snap.rows))]
        store.replace_source("in/f0.md", make_entries("in/f0.md", 1, tag="new"), state(0))
        store.fold()  # the old cache file is replaced; the snapshot's rows now read the new one
        assert [snap.entry(i).content for i in range(len(snap.rows))] == before
        store.replace_source("in/f2.md", [], state(2))
        store.fold()  # and again, after the rows it held were removed
        assert [snap.entry(i).content for i in range(len(snap.rows))] == before


@pytest.mark.parametrize("region", ["matrix", "ids", "contents", "trailer"])
def test_a_damaged_byte_anywhere_in_the_cache_sends_the_open_to_the_json(path: Path, region: str) -> None:
    expected = _fill(path)
    idx = cache_path(path)
    data = bytearray(idx.read_bytes())
    header_len = int.from_bytes(data[8:12], "little")
    payload = 12 + header_len
    trailer_len = int.from_bytes(data[-len(END) - 4 : -len(END)], "little")
    lengths = json.loads(bytes(data[-len(END) - 4 - trailer_len : -len(END) - 4]))["lengths"]
    n = 12
    contents_at = len(data) - len(END) - 4 - trailer_len - (n + 1) * 8 - lengths["contents"]
    ids_at = payload + lengths["matrix"] + lengths["ints"] + lengths["codes"] + lengths["meta"]
    at = {"matrix": payload + 5, "ids": ids_at + 3, "contents": contents_at + 1, "trailer": len(data) - 20}
    data[at[region]] ^= 0x01
    idx.write_bytes(bytes(data))
    with open_store(path) as store:
        assert store.loaded_via == "parse"
        assert snapshot(store) == expected


# ----- the row indexes -----


def _new(text: str, chunk: int) -> NewEntry:
    return NewEntry(text, None, chunk, content_hash(text), np.full(DIMS, chunk + 1, np.float32), chunk)


def test_the_hash_index_keeps_a_live_row_for_each_hash_as_rows_come_and_go() -> None:
    t = RowTable(DIMS)
    t.reserve(5)
    a = t.append("a", _new("same", 0), np.ones(DIMS, np.float32))
    b = t.append("b", _new("same", 0), np.ones(DIMS, np.float32))
    c = t.append("c", _new("other", 0), np.ones(DIMS, np.float32))
    t.kill(c)  # before the index exists: it is built from the live rows
    index = t.hashes
    assert index.get(a.hash) is a and index.get(c.hash) is None
    d = t.append("d", _new("other", 0), np.ones(DIMS, np.float32))
    assert index.get(d.hash) is d
    t.kill(a)
    assert index.get(a.hash) is b
    moved = t.renamed(b, "z")
    assert index.get(a.hash) is moved
    t.kill(moved)
    assert index.get(a.hash) is None and not index.more
    t.kill(d)
    assert not index.first
    # Built late, after all of that, it says the same.
    t._hashes = None
    assert not t.hashes.first


def test_rows_of_another_writers_order_are_grouped_and_sorted_by_chunk() -> None:
    t = RowTable(DIMS)
    t.reserve(5)
    rows = [t.append(s, _new(f"{s}{k}", k), np.ones(DIMS, np.float32))
            for s, k in [("x", 1), ("x", 0), ("y", 0), ("x", 2), ("y", 1)]]  # fmt: skip
    groups = by_source(rows)
    assert {s: [r.chunk for r in g] for s, g in groups.items()} == {"x": [0, 1, 2], "y": [0, 1]}


def test_a_large_store_freezes_its_records_out_of_the_collector(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(path)
    monkeypatch.setattr(store_module, "FREEZE_ABOVE_ROWS", 10)
    assert store_io.FREEZE_ABOVE_ROWS == 100_000
    gc.unfreeze()
    try:
        with open_store(path) as store:
            assert gc.get_freeze_count() > 0
            frozen = gc.get_freeze_count()
        gc.unfreeze()
        monkeypatch.setattr(store_module, "FREEZE_ABOVE_ROWS", 13)  # the store holds 12
        with open_store(path) as store:
            assert store.count == 12 and gc.get_freeze_count() == 0
        assert frozen > store.count
    finally:
        gc.unfreeze()


def test_an_open_refused_for_another_fingerprint_keeps_no_cache_file_open(path: Path) -> None:
    _fill(path)
    other = Fingerprint("cd" * 32, "mean", True, 500, 50)
    with pytest.raises(FingerprintMismatchError) as info:
        Store.open(path, model="all-MiniLM-L6-v2", dimensions=DIMS, fingerprint=other)
    assert info.value is not None  # the traceback, and what it holds, still alive here
    assert not _open_idx_descriptors(path.parent)
