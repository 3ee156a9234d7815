"""The approximate vector index beside a large store: an HNSW graph (faiss) over 8-bit vectors.

Exact search reads every vector once per query (1.5 GB at a million chunks, ~120 ms on two
cores); the graph reads a few thousand. It only proposes candidates: ``daemon.query.rank``
scores each one again against the snapshot's own float32 matrix, drops those the snapshot
does not hold live, and ranks the rows the graph does not cover yet exactly, so a deleted
chunk is never returned, a new one is found at once, and every score is the exact cosine.

Labels are the graph's own ids (0, 1, 2... in the order vectors were added); ``label_rows``
maps each to a row of the store's matrix in one *layout*. Rows are only appended between two
compactions, so the builder thread just adds the rows past ``upto`` as snapshots show them;
a compaction (the store calls ``compacted``) moves rows down, and the map is moved with them
in one pass. A graph is never edited for a delete: the row is masked out, and when a quarter
of the labels are dead the graph is rebuilt beside the old one, which serves meanwhile.

Below ``min_rows`` live rows (measured in ``bench/vector_scale.py``) nothing is built and
search stays exact. While a graph is built (minutes at a million rows, with progress in the
log) searches are exact too: a build never blocks a search.

The graph is kept in ``<store>.ann`` (written after a build and at close, never fsynced: it
is a cache) with each label's content hash, so whatever the store did meanwhile, opening
matches labels to rows by hash, adds the rows it lacks and forgets the rest; a file that is
missing, damaged, or made for another model is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from daemon.store.annfile import GraphParams, Keys, faiss_module, read_graph, write_graph
from daemon.store.entries import Row
from daemon.store.format import Fingerprint, FloatMatrix
from daemon.store.io import temp_path

if TYPE_CHECKING:
    from daemon.store.snapshot import BoolMask, Snapshot

log = structlog.get_logger(__name__)

# Below this many live rows search stays exact (bench/vector_scale.py: exact takes 9.5 ms at
# 150,000 rows and 13 ms at 200,000 on the 2-core EPYC; the graph ~1 ms, for 0.67 KB a row).
MIN_ROWS = 150_000
# HNSW parameters, measured on clustered 384-d vectors (docs/benchmarks.md, "Recall at a
# million"). Recall is lost in the graph walk, not in the 8-bit distances or the candidate cut:
# re-scoring all of efSearch's candidates instead of the 61 fetched found no more, and float32
# storage (M 16) only 0.974 against 0.970. At 1,000,000 rows, efSearch 512, recall@10 is 0.970
# with M 16, 0.990 with M 24, 0.9935 with M 32 (graph p50 1.2 / 1.4 / 1.6 ms), for 528 / 592 /
# 656 MB; the builds took 278 / 202 / 222 s on two cores at load 2-4 (the load decided, not M).
# At 300,000 rows M 16 still gives 0.998: the denser graph matters at scale. Changing these
# rebuilds every saved graph (annfile checks them).
GRAPH = GraphParams(m=32, ef_construction=80, quantizer="8bit")
EF_SEARCH = 512
MAX_EF = 4096
# Candidates fetched beyond the ones asked for, to re-rank exactly.
OVERSAMPLE = 50
# Below this share of allowed rows a filter is applied inside the graph (a faiss selector);
# above it the few rows it excludes are dropped from the candidates.
FILTER_SHARE = 0.8
# A graph this dead (labels whose row was deleted) is rebuilt.
REBUILD_DEAD = 0.25
# Rows added to a serving graph per hold of the lock searches take (~0.1 s at a million rows).
BATCH = 256
# Rows added per call while building a graph no search uses yet (a stop waits for one call).
BUILD_BATCH = 5_000
TRAIN_SAMPLE = 50_000
# Threads faiss may use to build a graph (its OpenMP pool; searches use one each).
BUILD_THREADS = 2
# Compactions remembered for a graph still being built (each costs a byte per row).
HISTORY = 16
# A saved graph whose labels match less of the store than this is rebuilt instead.
MIN_MATCHED = 0.5

LabelRows = npt.NDArray[np.int64]


def ann_path(store: Path) -> Path:
    """Where the vector index of ``store`` lives."""
    return store.with_name(store.name + ".ann")


def row_keys(rows: Sequence[Row]) -> Keys:
    """Each row's content hash as two 64-bit words (the first 16 bytes of its sha256), shape (n, 2)."""
    if not rows:
        return np.empty((0, 2), dtype=np.uint64)
    try:
        raw = bytes.fromhex("".join(r.hash[:32] for r in rows))
    except ValueError:
        raw = b""
    if len(raw) != 16 * len(rows):
        # A foreign writer's hashes need not be sha256 hex: digest them instead.
        raw = b"".join(hashlib.blake2b(r.hash.encode(), digest_size=16).digest() for r in rows)
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(rows), 2).copy()


@dataclass(frozen=True)
class Candidates:
    """What the graph proposes for one query of one snapshot."""

    rows: npt.NDArray[np.int64]  # rows of the snapshot, live and allowed, in no useful order
    upto: int  # every row below this is in the graph; the rows from here on must be ranked exactly


@dataclass
class _Graph:
    """One faiss index with its label map in one layout."""

    index: Any  # faiss.IndexHNWSQ
    keys: Keys  # (labels, 2)
    label_rows: LabelRows  # row of each label in ``layout``, -1 for a dead row
    layout: int
    upto: int
    # The previous layout's map, for snapshots taken just before a compaction.
    previous: tuple[int, LabelRows, int] | None = None
    dead: int = 0
    saved_labels: int = -1  # labels when last written to the file

    def mapping(self, layout: int) -> tuple[LabelRows, int] | None:
        if layout == self.layout:
            return self.label_rows, self.upto
        if self.previous is not None and self.previous[0] == layout:
            return self.previous[1], self.previous[2]
        return None


@dataclass
class Progress:
    """How far the build of a graph is, for the log and ``status``."""

    state: str = "idle"  # idle (store too small), loading, building, ready, failed
    done: int = 0
    total: int = 0
    started: float = 0.0
    detail: str | None = None
    via: str | None = None  # how the serving graph came: "built" or "loaded" (from the file)


class VectorIndex:
    """The graph of one writable store, with its builder thread. Thread-safe.

    The store's writer calls ``offer`` with every new snapshot and ``compacted`` before it
    moves rows; searches call ``candidates`` from any thread.
    """

    def __init__(self, store: Path, dims: int, fingerprint: Fingerprint, *, min_rows: int = MIN_ROWS) -> None:
        self.path = ann_path(store)
        self.dims = dims
        self.fingerprint = fingerprint
        self.min_rows = min_rows
        self.params = GRAPH  # read here, so a graph file and the builds of one index agree
        self.progress = Progress()
        self._lock = threading.Lock()
        self._graph: _Graph | None = None
        # The last compactions (layout, rows alive before it): a graph built or matched from an
        # older snapshot is moved through them before it serves.
        self._history: list[tuple[int, BoolMask]] = []
        self._latest: Snapshot | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tried_file = False
        # Started by the first snapshot large enough to index: small stores never start it.
        self._thread: threading.Thread | None = None
        with contextlib.suppress(OSError):
            temp_path(self.path).unlink()

    # ----- the writer's side -----

    def offer(self, snap: Snapshot) -> None:
        """A new snapshot exists: the builder brings the graph up to it."""
        self._latest = snap
        if self._thread is None:
            if len(snap.rows) < self.min_rows or not snap.normalized or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="embedd-ann", daemon=True)
            self._thread.start()
        self._wake.set()

    def compacted(self, layout: int, alive: BoolMask) -> None:
        """Rows of ``layout`` where ``alive`` is False are about to go; the rest move down."""
        alive = alive.copy()
        with self._lock:
            self._history.append((layout, alive))
            del self._history[:-HISTORY]
            if self._graph is not None:
                _move(self._graph, layout, alive)

    def close(self) -> None:
        """Stop the builder and write the graph if it changed since it was read or written."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        graph = self._graph
        if graph is not None and graph.saved_labels != len(graph.keys):
            self._save(graph)

    # ----- the searches' side -----

    @property
    def ready(self) -> bool:
        """True while a graph serves searches."""
        return self._graph is not None

    def wait_ready(self, snap: Snapshot, timeout: float) -> bool:
        """Block until the graph covers every row of ``snap`` (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            graph = self._graph
            if graph is not None:
                found = graph.mapping(snap.layout)
                if found is not None and found[1] >= len(snap.rows):
                    return True
            self._wake.set()
            time.sleep(0.05)
        return False

    def candidates(
        self, snap: Snapshot, query: FloatMatrix, want: int, mask: BoolMask | None
    ) -> Candidates | None:
        """Rows of ``snap`` the graph finds closest to ``query`` (unit length), at least ``want``
        of them when the snapshot holds that many allowed rows; None when there is no graph
        for this snapshot (search exactly)."""
        n = len(snap.rows)
        with self._lock:
            graph = self._graph
            found = None if graph is None else graph.mapping(snap.layout)
            if graph is None or found is None:
                return None
            label_rows, upto = found
            upto = min(upto, n)
            allowed = n if mask is None else int(np.count_nonzero(mask[:upto]))
            if allowed == 0:
                return Candidates(np.empty(0, dtype=np.int64), upto)
            share = allowed / max(upto, 1)
            faiss = faiss_module()
            faiss.omp_set_num_threads(1)
            params = faiss.SearchParametersHNSW()
            keep = None
            if share < FILTER_SHARE:
                # A filter: the graph skips the rows it excludes, so every candidate counts.
                params.sel, keep = _selector(faiss, label_rows, mask, n)
                fetch = want + 10
                params.efSearch = int(min(MAX_EF, max(EF_SEARCH, fetch, EF_SEARCH / max(share, 1e-3))))
            else:
                # Deleted rows (and rows past this snapshot) are dropped after the search.
                share *= 1 - graph.dead / max(len(graph.keys), 1)
                fetch = int(want / max(share, 0.5) * 1.1) + OVERSAMPLE
                params.efSearch = int(min(MAX_EF, max(EF_SEARCH, fetch)))
            _, labels = graph.index.search(query.reshape(1, -1), fetch, params=params)
            del keep  # the selector's bits: alive until the search is done
        labels = labels[0]
        labels = labels[(labels >= 0) & (labels < len(label_rows))]
        rows = label_rows[labels]
        rows = rows[(rows >= 0) & (rows < upto)]
        if mask is not None:
            rows = rows[mask[rows]]
        return Candidates(rows, upto)

    # ----- the builder thread -----

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            snap = self._latest
            if snap is None or self._stop.is_set():
                continue
            try:
                self._step(snap)
            except Exception as exc:  # a broken graph costs speed, never a search or the daemon
                log.exception("vector_index_failed", path=str(self.path), reason=str(exc))
                with self._lock:
                    self._graph = None
                self.progress.state = "failed"
                self.progress.detail = str(exc)
                self._stop.wait(60.0)

    def _step(self, snap: Snapshot) -> None:
        graph = self._graph
        if graph is None:
            if not snap.normalized or snap.count < self.min_rows:
                return
            if not self._tried_file:
                self._tried_file = True
                if self._load(snap):
                    return
            self._build(snap, "no usable index file")
            return
        if graph.mapping(snap.layout) is None:
            if snap.layout < graph.layout:
                return  # the graph already moved through a compaction this snapshot predates
            # A compaction this index did not see (it cannot happen through the store's hook):
            # find each label's row again by its hash, searching exactly meanwhile.
            with self._lock:
                self._graph = None
            self._install(self._matched(graph.index, graph.keys, snap), snap)
            return
        self._catch_up(snap)
        if graph.dead > REBUILD_DEAD * max(len(graph.keys), 1) and snap.count >= self.min_rows:
            self._build(snap, f"{graph.dead} of {len(graph.keys)} indexed rows were deleted")

    def _catch_up(self, snap: Snapshot) -> None:
        """Add the rows of ``snap`` past the graph's ``upto`` (those appended since)."""
        n = len(snap.rows)
        while not self._stop.is_set():
            with self._lock:
                graph = self._graph
                if graph is None or graph.layout != snap.layout or graph.upto >= n:
                    return
                start, stop = graph.upto, min(n, graph.upto + BATCH)
                alive = (
                    np.ones(stop - start, dtype=np.bool_) if snap.alive is None else snap.alive[start:stop]
                )
                rows = np.flatnonzero(alive).astype(np.int64) + start
                _add(graph, snap, rows)
                graph.upto = stop
            # Let a search waiting for the lock in before the next batch (Lock is not fair).
            time.sleep(0.001)

    def _build(self, snap: Snapshot, why: str) -> None:
        """Build a graph over the live rows of ``snap`` while the current one (if any) serves."""
        faiss = faiss_module()
        n = len(snap.rows)
        rows = (
            np.arange(n, dtype=np.int64)
            if snap.alive is None
            else np.flatnonzero(snap.alive).astype(np.int64)
        )
        p = self.progress
        p.state, p.done, p.total, p.started, p.detail = "building", 0, len(rows), time.monotonic(), why
        log.info("vector_index_building", path=str(self.path), rows=len(rows), reason=why)
        faiss.omp_set_num_threads(BUILD_THREADS)
        qtype = getattr(faiss.ScalarQuantizer, "QT_" + self.params.quantizer)
        index = faiss.IndexHNSWSQ(self.dims, qtype, self.params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.params.ef_construction
        sample = rows[:: max(1, len(rows) // TRAIN_SAMPLE)]
        index.train(np.ascontiguousarray(snap.matrix[sample]))
        last_log = time.monotonic()
        for start in range(0, len(rows), BUILD_BATCH):
            if self._stop.is_set():
                p.state = "idle" if self._graph is None else "ready"
                return
            index.add(np.ascontiguousarray(snap.matrix[rows[start : start + BUILD_BATCH]]))
            p.done = min(len(rows), start + BUILD_BATCH)
            if time.monotonic() - last_log >= 10.0:
                last_log = time.monotonic()
                rate = p.done / max(last_log - p.started, 1e-9)
                eta = round((p.total - p.done) / max(rate, 1e-9))
                log.info("vector_index_progress", path=str(self.path), done=p.done, total=p.total,
                         rows_per_s=round(rate), eta_s=eta)  # fmt: skip
        graph = _Graph(index, row_keys([snap.rows[i] for i in rows.tolist()]), rows.copy(), snap.layout, n)
        log.info("vector_index_built", path=str(self.path), rows=len(rows),
                 seconds=round(time.monotonic() - p.started, 1))  # fmt: skip
        self._save(graph)  # before it serves: no search waits for the write
        self.progress.via = "built"
        self._install(graph, snap)

    def _install(self, graph: _Graph, snap: Snapshot) -> None:
        """Make ``graph`` (made for ``snap``'s layout) the one that serves, after replaying the
        compactions that happened since."""
        with self._lock:
            for layout, alive in self._history:
                _move(graph, layout, alive)  # (only those at or after the graph's layout apply)
            graph.dead = int(np.count_nonzero(graph.label_rows < 0))
            self._graph = graph
        self.progress.state = "ready"
        self.progress.done = self.progress.total = len(graph.keys)
        self._catch_up(snap)

    def _matched(self, index: Any, keys: Keys, snap: Snapshot) -> _Graph:
        """A graph over ``index`` whose labels are matched to the rows of ``snap`` by content hash;
        the live rows it lacks are added."""
        n = len(snap.rows)
        rkeys = row_keys(snap.rows)
        live = np.ones(n, dtype=np.bool_) if snap.alive is None else snap.alive.copy()
        label_rows = _match(keys, rkeys, live)
        graph = _Graph(index, keys, label_rows, snap.layout, n)
        covered = np.zeros(n, dtype=np.bool_)
        covered[label_rows[label_rows >= 0]] = True
        missing = np.flatnonzero(live & ~covered).astype(np.int64)
        for start in range(0, len(missing), BUILD_BATCH):
            _add(graph, snap, missing[start : start + BUILD_BATCH])
        return graph

    # ----- the file -----

    def _load(self, snap: Snapshot) -> bool:
        """Serve the graph of ``<store>.ann`` when it is usable for ``snap``."""
        self.progress.state = "loading"
        started = time.monotonic()
        try:
            with open(self.path, "rb") as f:
                index, keys = read_graph(f, self.dims, self.fingerprint, params=self.params)
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error) as exc:
            log.warning("vector_index_unusable", path=str(self.path), reason=str(exc), action="rebuilding")
            return False
        graph = self._matched(index, keys, snap)
        matched = int(np.count_nonzero(graph.label_rows[: len(keys)] >= 0))
        if matched < MIN_MATCHED * min(len(keys), snap.count):
            log.warning("vector_index_unusable", path=str(self.path), reason=f"only {matched} of its "
                        f"{len(keys)} rows are still in the store", action="rebuilding")  # fmt: skip
            return False
        graph.saved_labels = len(keys) if matched == len(graph.keys) else -1
        self.progress.via = "loaded"
        self._install(graph, snap)
        log.info("vector_index_loaded", path=str(self.path), rows=len(graph.keys), matched=matched,
                 seconds=round(time.monotonic() - started, 2))  # fmt: skip
        return True

    def _save(self, graph: _Graph) -> None:
        """Write ``graph`` to ``<store>.ann`` (temp file, rename); a failure only logs."""
        tmp = temp_path(self.path)
        try:
            # Under the lock when the graph serves: a search must not run beside an add.
            with self._lock if graph is self._graph else contextlib.nullcontext():
                keys = graph.keys
                with open(tmp, "wb") as f:
                    write_graph(f, graph.index, keys, self.dims, self.fingerprint, params=self.params)
                graph.saved_labels = len(keys)
            tmp.replace(self.path)
        except (OSError, RuntimeError) as exc:
            log.warning("vector_index_write_failed", path=str(self.path), reason=str(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()


def _add(graph: _Graph, snap: Snapshot, rows: npt.NDArray[np.int64]) -> None:
    """Add ``rows`` of ``snap`` (in ``graph``'s layout) to the graph as new labels."""
    if not len(rows):
        return
    graph.index.add(np.ascontiguousarray(snap.matrix[rows]))
    graph.keys = np.concatenate([graph.keys, row_keys([snap.rows[i] for i in rows.tolist()])])
    graph.label_rows = np.concatenate([graph.label_rows, rows])


def _move(graph: _Graph, layout: int, alive: BoolMask) -> None:
    """Move the label map of ``graph`` through one compaction of ``layout`` (rows where ``alive``
    is False go, the others move down)."""
    if graph.layout != layout:
        return
    moved = np.cumsum(alive, dtype=np.int64) - 1
    moved[~alive] = -1
    old = graph.label_rows
    new = np.full(len(old), -1, dtype=np.int64)
    inside = (old >= 0) & (old < len(moved))
    new[inside] = moved[old[inside]]
    upto = min(graph.upto, len(moved))
    graph.previous = (layout, old, graph.upto)
    graph.label_rows = new
    graph.upto = int(np.count_nonzero(moved[:upto] >= 0)) if upto else 0
    graph.layout = layout + 1
    graph.dead = int(np.count_nonzero(new < 0))


def _match(keys: Keys, rkeys: Keys, live: BoolMask) -> LabelRows:
    """For each label, a live row with the same hash (each row given to one label), else -1."""
    label_rows = np.full(len(keys), -1, dtype=np.int64)
    cand = np.flatnonzero(live)
    if not len(cand) or not len(keys):
        return label_rows
    order = cand[np.lexsort((rkeys[cand, 1], rkeys[cand, 0]))]
    sorted0, sorted1 = rkeys[order, 0], rkeys[order, 1]
    pos = np.searchsorted(sorted0, keys[:, 0])
    pos = np.minimum(pos, len(order) - 1)
    hit = (sorted0[pos] == keys[:, 0]) & (sorted1[pos] == keys[:, 1])
    label_rows[hit] = order[pos[hit]]
    # Two labels of one hash (the same text twice) got the same row: only the first keeps it;
    # the other row of that hash is found missing and added as a label of its own.
    rows = label_rows[hit]
    _, first = np.unique(rows, return_index=True)
    dup = np.ones(len(rows), dtype=np.bool_)
    dup[first] = False
    idx = np.flatnonzero(hit)[dup]
    label_rows[idx] = -1
    return label_rows


def _selector(faiss: Any, label_rows: LabelRows, mask: BoolMask | None, n: int) -> tuple[Any, Any]:
    """A faiss selector of the labels whose row is below ``n`` and allowed by ``mask``."""
    keep = np.zeros(len(label_rows), dtype=np.bool_)
    inside = (label_rows >= 0) & (label_rows < n)
    keep[inside] = True if mask is None else mask[label_rows[inside]]
    bits = np.packbits(keep, bitorder="little")
    return faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bits)), bits


__all__ = ["MIN_ROWS", "Candidates", "Progress", "VectorIndex", "ann_path", "row_keys"]
