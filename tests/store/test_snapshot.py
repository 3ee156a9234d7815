"""Store snapshots: what a search on another thread sees never changes under it."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import numpy as np

from daemon.query.rank import rank_snapshot
from daemon.store.format import content_hash
from daemon.store.snapshot import Snapshot
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

DIMS = 8


def make_entries(source: str, n: int, *, tag: str = "") -> list[NewEntry]:
    rng = np.random.default_rng(zlib.crc32(f"{source}|{tag}".encode()))
    out = []
    for i in range(n):
        text = f"{source} chunk {i} {tag}"
        vec = rng.standard_normal(DIMS).astype(np.float32)
        vec /= np.linalg.norm(vec)
        out.append(NewEntry(text, None, i, content_hash(text), vec, 1_764_100_000_000 + i))
    return out


def state(n: int) -> FileState:
    return FileState(size=100 + n, mtime_ns=1_764_100_000_000_000_000 + n, inode=40 + n)


def open_store(path: Path) -> Store:
    return Store.open(
        path, model="m", dimensions=DIMS, fingerprint=Fingerprint("ab" * 32, "mean", True, 500, 50)
    )


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def frozen(snap: Snapshot) -> list[tuple[object, ...]]:
    """Everything a snapshot shows, live rows only, vectors as bits."""
    keep = range(len(snap.rows)) if snap.alive is None else np.flatnonzero(snap.alive)
    out = []
    for i in keep:
        e = snap.entry(int(i))
        out.append((e.id, e.content, e.source, e.chunk, bits(e.vector).tobytes()))
    return out


def filled(path: Path) -> Store:
    store = open_store(path)
    for k in range(6):
        store.replace_source(f"inbox/f{k}.txt", make_entries(f"inbox/f{k}.txt", 4), state(k))
    store.save()
    return store


def test_a_snapshot_is_unchanged_by_every_kind_of_change_and_by_saves(tmp_path: Path) -> None:
    store = filled(tmp_path / "embeddings.json")
    snap = store.snapshot()
    before = frozen(snap)
    assert snap.count == 24 and snap.files == 6
    store.remove_source("inbox/f1.txt")
    after_remove = store.snapshot()
    store.save()  # compacts within the same matrix capacity: must not move rows under the snapshots
    assert frozen(snap) == before
    store.rename_source("inbox/f2.txt", "inbox/moved.txt", state(9))
    store.replace_source("inbox/f3.txt", make_entries("inbox/f3.txt", 2, tag="edited"), state(10))
    store.replace_source("inbox/new.txt", make_entries("inbox/new.txt", 50), state(11))  # grows the matrix
    store.save()  # compacts the dead rows: copy-on-write, the snapshots keep their matrices
    store.remove_source("inbox/f4.txt")
    store.save()
    assert frozen(snap) == before
    assert after_remove.count == 20
    assert [r[2] for r in frozen(after_remove)].count("inbox/f2.txt") == 4  # not half-renamed
    now = frozen(store.snapshot())
    assert {r[2] for r in now} == {
        "inbox/f0.txt",
        "inbox/moved.txt",
        "inbox/f3.txt",
        "inbox/f5.txt",
        "inbox/new.txt",
    }
    assert store.snapshot().count == store.count == 4 + 4 + 2 + 4 + 50
    store.close()


def test_snapshots_are_reused_until_the_store_changes(tmp_path: Path) -> None:
    store = filled(tmp_path / "embeddings.json")
    first = store.snapshot()
    assert store.snapshot() is first
    store.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 4), state(0))  # identical: no change
    assert store.snapshot() is first
    store.remove_source("inbox/f0.txt")
    assert store.snapshot() is not first
    store.close()


def test_ranking_masks_removed_rows_and_filters_by_prefix_and_score(tmp_path: Path) -> None:
    store = filled(tmp_path / "embeddings.json")
    target = store.source_entries("inbox/f2.txt")[1].vector.copy()
    store.remove_source("inbox/f2.txt")
    hits = rank_snapshot(store.snapshot(), target, 3)
    assert all(h.source != "inbox/f2.txt" for h in hits)
    assert len(rank_snapshot(store.snapshot(), target, 1000)) == 20
    only = rank_snapshot(store.snapshot(), target, 5, source_prefix="inbox/f5")
    assert {h.source for h in only} == {"inbox/f5.txt"} and len(only) == 4
    best = rank_snapshot(store.snapshot(), store.source_entries("inbox/f0.txt")[0].vector, 5, min_score=0.999)
    assert [h.id for h in best] == [store.source_entries("inbox/f0.txt")[0].id]
    store.close()


def test_readers_on_other_threads_never_see_a_torn_state(tmp_path: Path) -> None:
    """A writer renames files back and forth and saves; readers always see whole files."""
    store = filled(tmp_path / "embeddings.json")
    lock = threading.RLock()
    with lock:
        current = [store.snapshot()]
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            snap = current[0]
            sources: dict[str, int] = {}
            for row in frozen(snap):
                sources[row[2]] = sources.get(row[2], 0) + 1
            if snap.count != 24 or any(n != 4 for n in sources.values()):
                errors.append(f"torn: {sources}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(60):
            with lock:
                a, b = (f"inbox/f{i % 6}.txt", "inbox/tmp.txt")
                store.rename_source(a, b, state(20 + i))
                store.rename_source(b, a, state(i % 6))
                store.replace_source(a, make_entries(a, 4, tag=str(i)), state(i % 6))
                if i % 7 == 0:
                    store.save()
                current[0] = store.snapshot()
    finally:
        stop.set()
        for t in threads:
            t.join()
    store.close()
    assert errors == []


def test_live_row_finds_each_chunk_of_its_own_snapshot_through_removes_renames_and_compaction(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "s.json")
    try:
        for i in range(6):
            store.replace_source(f"d/{i}.md", make_entries(f"d/{i}.md", 4), state(i))
        store.remove_source("d/1.md")
        store.rename_source("d/2.md", "e/2.md", state(2))
        old = store.snapshot()
        store.replace_source("d/3.md", make_entries("d/3.md", 2, tag="v2"), state(33))
        store.matrix()  # compacts: the rows of the old snapshot move in the store
        new = store.snapshot()
        for snap in (old, new):
            keep = range(len(snap.rows)) if snap.alive is None else np.flatnonzero(snap.alive).tolist()
            for i in keep:
                r = snap.rows[i]
                assert snap.live_row(r.source, r.chunk, r.hash) == i
            assert snap.live_row("d/1.md", 0, content_hash("d/1.md chunk 0 ")) is None  # removed
            assert snap.live_row("d/2.md", 0, content_hash("d/2.md chunk 0 ")) is None  # renamed away
        # d/3.md's third chunk is in the old snapshot only; its new first chunk has another hash.
        r3 = next(r for r in old.rows if r.source == "d/3.md" and r.chunk == 2)
        assert old.live_row("d/3.md", 2, r3.hash) is not None
        assert new.live_row("d/3.md", 2, r3.hash) is None
        assert new.live_row("d/3.md", 0, content_hash("d/3.md chunk 0 ")) is None
    finally:
        store.close()
