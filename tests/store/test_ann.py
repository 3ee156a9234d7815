"""The approximate vector index of a large store: the same hits as exact search, never a
deleted chunk, a new chunk at once, through compactions, filters, reopening and damage.

Real store files in ``tmp_path`` and a real faiss graph; the index is switched on from 1,500
rows here (``ann_min_rows``) instead of the measured size, so the stores stay small.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from daemon.query.rank import top_k, vector_top
from daemon.store.ann import ann_path
from daemon.store.format import content_hash
from daemon.store.snapshot import Snapshot
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

DIMS = 48
PER_FILE = 20
FILES = 150  # 3,000 rows
MIN_ROWS = 1_500
FP = Fingerprint("cd" * 32, "mean", True, 500, 50)
CENTERS = np.random.default_rng(3).standard_normal((60, DIMS)).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def vectors(seed: str, n: int) -> np.ndarray:
    """Clustered unit vectors (as embeddings are): a centre each, plus noise."""
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    picks = CENTERS[rng.integers(0, len(CENTERS), n)]
    return unit(picks + rng.standard_normal((n, DIMS)).astype(np.float32) * 0.15)


def entries(source: str, n: int = PER_FILE, *, tag: str = "", model: str = "") -> list[NewEntry]:
    """``n`` chunks of ``source``; another ``model`` gives the same texts other vectors."""
    vecs = vectors(source + tag + model, n)
    out = []
    for i in range(n):
        text = f"{source} chunk {i} {tag}"
        out.append(NewEntry(text, None, i, content_hash(text), vecs[i], 1_764_100_000_000 + i))
    return out


def state(k: int) -> FileState:
    return FileState(size=100 + k, mtime_ns=1_764_100_000_000_000_000 + k, inode=40 + k)


def open_store(path: Path) -> Store:
    return Store.open(path, model="m", dimensions=DIMS, fingerprint=FP, keyword=False, ann_min_rows=MIN_ROWS)


def source(k: int) -> str:
    return f"{'docs' if k % 10 == 0 else 'inbox'}/f{k}.txt"


def filled(path: Path) -> Store:
    store = open_store(path)
    for k in range(FILES):
        store.replace_source(source(k), entries(source(k)), state(k))
    store.save()
    return store


def ready(store: Store) -> Snapshot:
    snap = store.snapshot()
    assert snap.ann is not None
    assert snap.ann.wait_ready(snap, timeout=120), f"the index never covered the store: {snap.ann.progress}"
    return snap


def queries(n: int) -> np.ndarray:
    return vectors("queries", n)


def exact(snap: Snapshot, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
    return top_k(snap.matrix, q, k, normalized=True, mask=mask)


def recall(snap: Snapshot, qs: np.ndarray, k: int, mask: np.ndarray | None = None) -> float:
    found = 0
    for q in qs:
        truth = exact(snap, q, k, mask)
        got = vector_top(snap, q, k, mask=mask)
        assert len(got) == len(truth)
        scores = dict(truth)
        for row, score in got:
            if row in scores:
                found += 1
                assert score == pytest.approx(scores[row], abs=1e-6)
            if mask is not None:
                assert mask[row]
    return found / max(1, sum(len(exact(snap, q, k, mask)) for q in qs))


def test_a_large_store_is_searched_through_its_graph_with_the_exact_hits(tmp_path: Path) -> None:
    store = filled(tmp_path / "embeddings.json")
    snap = ready(store)
    assert snap.ann is not None
    assert snap.ann.candidates(snap, queries(1)[0], 10, None) is not None  # the graph answers
    assert recall(snap, queries(40), 10) >= 0.98
    store.close()


def test_a_small_store_never_builds_a_graph(tmp_path: Path) -> None:
    store = open_store(tmp_path / "embeddings.json")
    for k in range(10):
        store.replace_source(source(k), entries(source(k)), state(k))
    store.save()
    snap = store.snapshot()
    assert snap.ann is not None and not snap.ann.wait_ready(snap, timeout=0.5)
    assert vector_top(snap, queries(1)[0], 5) == exact(snap, queries(1)[0], 5)
    store.close()
    assert not ann_path(store.path).exists()


def test_a_deleted_chunk_is_never_returned_and_a_new_one_is_found_at_once(tmp_path: Path) -> None:
    store = filled(tmp_path / "embeddings.json")
    ready(store)
    gone = store.source_entries(source(7))[3].vector.copy()
    store.remove_source(source(7))
    snap = store.snapshot()  # at once: before the builder sees anything
    rows = {row for row, _ in vector_top(snap, gone, 50)}
    assert not any(snap.rows[r].source == source(7) for r in rows)

    fresh = entries("inbox/new.txt", 5, tag="new")
    store.replace_source("inbox/new.txt", fresh, state(999))
    snap = store.snapshot()
    best = vector_top(snap, fresh[2].vector, 1)
    assert snap.rows[best[0][0]].source == "inbox/new.txt" and best[0][1] == pytest.approx(1.0, abs=1e-5)

    store.save()  # compacts: rows move down, the graph's map moves with them
    snap = store.snapshot()
    assert snap.layout > 0
    assert snap.ann is not None and snap.ann.candidates(snap, gone, 10, None) is not None
    assert not any(snap.rows[r].source == source(7) for r, _ in vector_top(snap, gone, 50))
    kept = store.source_entries(source(8))[4]
    top = vector_top(snap, kept.vector, 1)
    assert snap.rows[top[0][0]].id == kept.id
    assert recall(ready(store), queries(30), 10) >= 0.98
    store.close()


def test_changes_and_compactions_while_the_graph_is_built_are_not_lost(tmp_path: Path) -> None:
    """The build runs on its own thread from one snapshot; whatever the writer does meanwhile
    (deletes, compactions that move rows, new files), the graph that serves agrees with the store."""
    store = filled(tmp_path / "embeddings.json")
    store.snapshot()  # starts the build
    removed = [source(k) for k in range(0, FILES, 3)]
    for k, name in enumerate(removed):
        store.remove_source(name)
        store.replace_source(
            f"inbox/late{k}.txt", entries(f"inbox/late{k}.txt", 5, tag="late"), state(600 + k)
        )
        if k % 10 == 0:
            store.save()  # a compaction, perhaps in the middle of the build
            store.snapshot()
    store.save()
    snap = ready(store)
    assert snap.ann is not None and snap.ann.candidates(snap, queries(1)[0], 10, None) is not None
    assert not any(snap.rows[r].source in removed for q in queries(20) for r, _ in vector_top(snap, q, 30))
    for k in (0, len(removed) - 1):
        late = store.source_entries(f"inbox/late{k}.txt")[2]
        assert snap.rows[vector_top(snap, late.vector, 1)[0][0]].id == late.id
    assert recall(snap, queries(30), 10) >= 0.98
    store.close()


def test_filters_keep_the_exact_hits_whether_wide_or_narrow(tmp_path: Path) -> None:
    store = filled(tmp_path / "embeddings.json")
    snap = ready(store)
    for prefix in ("inbox/", "docs/", "inbox/f13"):  # 90 %, 10 % (inside the graph), 20 rows
        mask = snap.source_mask(prefix)
        assert recall(snap, queries(20), 10, mask) >= 0.97, prefix
    store.close()


def test_the_graph_is_kept_beside_the_store_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.json"
    store = filled(path)
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "built"
    store.close()
    assert ann_path(path).exists()

    store = open_store(path)
    store.remove_source(source(3))  # changed since the file was written: matched by hash
    store.replace_source("inbox/late.txt", entries("inbox/late.txt", 4, tag="late"), state(500))
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "loaded"
    assert recall(snap, queries(30), 10) >= 0.98
    late = store.source_entries("inbox/late.txt")[1]
    assert snap.rows[vector_top(snap, late.vector, 1)[0][0]].id == late.id
    store.close()

    data = bytearray(ann_path(path).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    ann_path(path).write_bytes(bytes(data))
    store = open_store(path)
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "built"
    assert recall(snap, queries(30), 10) >= 0.98
    store.close()


def test_a_graph_made_for_another_model_is_not_used_though_every_hash_matches(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.json"
    store = filled(path)
    ready(store)
    store.close()
    assert ann_path(path).exists()
    other = Fingerprint("ef" * 32, "mean", True, 500, 50)
    store = Store.open(path, model="m", dimensions=DIMS, fingerprint=other, keyword=False,
                       ann_min_rows=MIN_ROWS, rebuild=True)  # fmt: skip
    assert store.count == 0  # moved aside: everything is embedded again, with the same texts
    for k in range(FILES):
        store.replace_source(source(k), entries(source(k), model="other"), state(k))
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "built"
    assert recall(snap, queries(20), 10) >= 0.98
    store.close()


SUBJECTS = ["The library", "Our team", "The city council", "A small bakery", "The hospital", "The school",
            "The railway", "A farmer", "The museum", "The river authority"]  # fmt: skip
ACTS = ["opened a new branch", "cut its budget", "hired twelve nurses", "repaired the old bridge",
        "bought solar panels", "lost the contract", "planted apple trees", "published its accounts",
        "closed for the winter", "won a design prize"]  # fmt: skip
QUERIES = ["a bakery bought panels for solar power", "nurses were hired by the hospital",
           "the bridge was fixed", "budget cuts at the school", "trees on the farm"]  # fmt: skip
WHEN = ["last spring", "after the flood", "in the north district", "despite protests", "with EU money"]


def test_real_model_vectors_through_the_graph_and_hybrid_search(tmp_path: Path, default_model: Path) -> None:
    """The real model's vectors (all-MiniLM-L6-v2): the graph's hits are the exact ones, and
    hybrid search through it never returns a deleted chunk."""
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
    from daemon.query.search import SearchOptions, search_snapshot

    texts = [f"{s} {a} {w}." for s in SUBJECTS for a in ACTS for w in WHEN]  # 500 sentences
    embedder = LlamaEmbedder(default_model, EmbedderSettings(threads=2))
    try:
        vecs = embedder.embed(texts)
        qvecs = embedder.embed(QUERIES)
    finally:
        embedder.close()
    dims = vecs.shape[1]
    store = Store.open(
        tmp_path / "embeddings.json", model="m", dimensions=dims, fingerprint=FP, ann_min_rows=300
    )
    for f in range(0, len(texts), 10):
        rows = [
            NewEntry(texts[f + i], None, i, content_hash(texts[f + i]), vecs[f + i], 1) for i in range(10)
        ]
        store.replace_source(f"docs/f{f}.txt", rows, state(f))
    snap = ready(store)
    assert snap.ann is not None and snap.ann.candidates(snap, qvecs[0], 10, None) is not None
    assert recall(snap, qvecs, 10) >= 0.98
    best = vector_top(snap, qvecs[1], 1)[0][0]
    assert "hired twelve nurses" in snap.rows[best].content
    gone = snap.rows[best].source
    store.remove_source(gone)
    snap = store.snapshot()
    for mode in ("vector", "hybrid"):
        hits = search_snapshot(snap, "nurses hired hospital", qvecs[1], SearchOptions(k=20, mode=mode)).hits
        assert hits and all(h.source != gone for h in hits), mode
    store.close()


def _header(path: Path) -> tuple[int, dict[str, object]]:
    import struct

    import orjson

    data = ann_path(path).read_bytes()
    (size,) = struct.unpack("<I", data[8:12])
    return size, orjson.loads(data[12 : 12 + size])


def test_a_graph_built_with_other_parameters_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file names the parameters its graph was built with; one made with others (a sparser
    graph, an older release's) is rebuilt, and a file of an older release, which names none,
    counts as built with the parameters that release used."""
    import orjson

    from daemon.store import ann
    from daemon.store.annfile import LEGACY, GraphParams

    path = tmp_path / "embeddings.json"
    sparse = GraphParams(m=8, ef_construction=40, quantizer="8bit")
    monkeypatch.setattr(ann, "GRAPH", sparse)
    store = filled(path)
    ready(store)
    store.close()
    assert _header(path)[1]["graph"] == {"m": 8, "ef_construction": 40, "quantizer": "8bit"}

    monkeypatch.setattr(ann, "GRAPH", GraphParams(m=12, ef_construction=40, quantizer="8bit"))
    store = open_store(path)
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "built"
    assert recall(snap, queries(20), 10) >= 0.98
    store.close()
    assert _header(path)[1]["graph"] == {"m": 12, "ef_construction": 40, "quantizer": "8bit"}

    # An older release's file: the same graph, no parameters in the header.
    monkeypatch.setattr(ann, "GRAPH", LEGACY)
    store = open_store(path)
    ready(store)
    store.close()
    size, header = _header(path)
    del header["graph"]
    data = bytearray(ann_path(path).read_bytes())
    data[12 : 12 + size] = orjson.dumps(header).ljust(size)
    ann_path(path).write_bytes(bytes(data))
    store = open_store(path)
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "loaded"  # LEGACY is what it was built with
    store.close()

    monkeypatch.setattr(ann, "GRAPH", sparse)
    ann_path(path).write_bytes(bytes(data))
    store = open_store(path)
    snap = ready(store)
    assert snap.ann is not None and snap.ann.progress.via == "built"
    store.close()
