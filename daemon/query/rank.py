"""Ranking a store's vectors against a query vector, and the checks before it.

``vector_top`` ranks a snapshot: exactly (numpy) in a small store, and in a large one through
the candidates of its approximate index (``daemon.store.ann``), each scored again exactly and
joined by the rows the index does not hold yet; a filter that leaves few rows is ranked
exactly over those rows. So every score is the exact cosine, a deleted row is never returned
and a new one is found at once. The daemon, ``embedd search`` without a daemon and the MCP
server all rank through it, so they return the same hits in the same order.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.embed.embedder import Embedder, FloatMatrix
from daemon.errors import FingerprintMismatchError, UsageError
from daemon.query.hit import Hit
from daemon.store.snapshot import BoolMask, Snapshot
from daemon.store.store import Store

# From this many rows the scores are computed in two halves on two threads (numpy releases
# the GIL in einsum): 10.3 ms -> 6.5 ms for 100,000 x 384 on the 2-vCPU EPYC. Each row's score
# is computed alone either way, so the halves give the very same numbers.
SPLIT_ROWS = 20_000
# A filter leaving at most this many rows is ranked exactly over them (bench/vector_scale.py:
# gathering 50,000 of 1,000,000 rows and scoring them takes ~6 ms, the filtered graph more).
SUBSET_ROWS = 50_000
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor | None:
    global _POOL
    if len(os.sched_getaffinity(0)) < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(2, thread_name_prefix="embedd-rank")
        return _POOL


def scores_of(matrix: FloatMatrix, q: FloatMatrix) -> FloatMatrix:
    """``matrix @ q`` on at most two threads, never BLAS's (see ``top_k``)."""
    pool = _pool() if len(matrix) >= SPLIT_ROWS else None
    if pool is None:
        whole: FloatMatrix = np.einsum("ij,j->i", matrix, q)
        return whole
    half = len(matrix) // 2
    out = np.empty(len(matrix), dtype=np.result_type(matrix.dtype, q.dtype))
    parts = [
        pool.submit(np.einsum, "ij,j->i", matrix[:half], q, out=out[:half]),
        pool.submit(np.einsum, "ij,j->i", matrix[half:], q, out=out[half:]),
    ]
    for part in parts:
        part.result()
    return out


def top_k(
    matrix: FloatMatrix, query: FloatMatrix, k: int, *, normalized: bool, mask: BoolMask | None = None
) -> list[tuple[int, float]]:
    """Rows of ``matrix`` most cosine-similar to ``query``, best first, as (row, score).

    With ``normalized`` the rows are taken as unit vectors already; otherwise each score is
    divided by its row's norm, which costs one float per row instead of a normalised copy.
    Rows where ``mask`` is False are never returned.
    """
    n = len(matrix)
    if n == 0 or k <= 0:
        return []
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    # einsum, not `matrix @ q`: BLAS would run this on all cores, and its threads spin against
    # llama.cpp's on a loaded machine (measured 60x slower at 5,000 rows with the daemon
    # indexing). Large matrices are split over two threads of our own (``scores_of``).
    scores = scores_of(matrix, q)
    if not normalized:
        scores /= np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    if mask is not None:
        scores[~mask] = -np.inf
        k = min(k, int(mask.sum()))
        if k == 0:
            return []
    if k < n:
        best = np.argpartition(-scores, k - 1)[:k]
        order = best[np.argsort(-scores[best], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    # tolist() makes the same Python ints and floats as int() and float() of each, at once.
    return list(zip(order.tolist(), scores[order].tolist(), strict=True))


def vector_top(
    snap: Snapshot, query: FloatMatrix, k: int, *, mask: BoolMask | None = None
) -> list[tuple[int, float]]:
    """The ``k`` rows of ``snap`` most cosine-similar to ``query`` where ``mask`` allows, best
    first, as (row, score); through the store's approximate index when it serves this snapshot.
    Rows the snapshot holds dead are never returned, whatever ``mask`` says."""
    if snap.alive is not None:
        mask = snap.alive if mask is None else mask & snap.alive
    n = len(snap.matrix)
    ann = snap.ann
    if n == 0 or k <= 0 or ann is None or not snap.normalized or n < ann.min_rows:
        return top_k(snap.matrix, query, k, normalized=snap.normalized, mask=mask)
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    allowed = n if mask is None else int(np.count_nonzero(mask))
    if mask is not None and allowed <= max(SUBSET_ROWS, k):
        return _top_rows(snap.matrix, q, k, np.flatnonzero(mask))
    found = ann.candidates(snap, q, k, mask)
    if found is None or found.upto < n // 2:
        return top_k(snap.matrix, q, k, normalized=True, mask=mask)
    rows = np.unique(found.rows)
    if found.upto < n:
        tail = np.arange(found.upto, n, dtype=np.int64)
        rows = np.concatenate([rows, tail if mask is None else tail[mask[found.upto :]]])
    if len(rows) < min(k, allowed):
        # The graph found fewer than asked among many allowed rows (a filter it walks badly):
        # the exact ranking never leaves out a hit that exists.
        return top_k(snap.matrix, q, k, normalized=True, mask=mask)
    return _top_rows(snap.matrix, q, k, rows)


def _top_rows(
    matrix: FloatMatrix, q: FloatMatrix, k: int, rows: npt.NDArray[np.int64]
) -> list[tuple[int, float]]:
    """The ``k`` of ``rows`` (of unit vectors) scoring best against the unit ``q``."""
    if not len(rows):
        return []
    scores: FloatMatrix = np.einsum("ij,j->i", matrix[rows], q)
    if k < len(rows):
        best = np.argpartition(-scores, k - 1)[:k]
        order = best[np.argsort(-scores[best], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    return list(zip(rows[order].tolist(), scores[order].tolist(), strict=True))


def check_compatible(store: Store, embedder: Embedder, model_path: Path) -> None:
    """Raise FingerprintMismatchError when ``embedder``'s vectors cannot be compared with the store's."""
    fp = store.fingerprint
    if fp is not None and fp.model_sha256 != embedder.fingerprint:
        raise FingerprintMismatchError(
            f"store {store.path} was embedded with the model file of sha256 {fp.model_sha256}, but the "
            f"configured model {model_path} has sha256 {embedder.fingerprint}; search with the model the "
            "store was built with, or re-embed the store with `embedd run --config … --reembed`"
        )
    if store.count and store.dimensions != embedder.dimension:
        raise FingerprintMismatchError(
            f"store {store.path} holds {store.dimensions}-dimensional vectors, but the configured "
            f"model {model_path} makes {embedder.dimension}-dimensional ones"
        )


def check_k(k: int) -> None:
    """Raise UsageError for a k below 1."""
    if k < 1:
        raise UsageError(f"-k must be at least 1, not {k}")


def rank_snapshot(
    snap: Snapshot,
    vector: FloatMatrix,
    k: int,
    *,
    source_prefix: str | None = None,
    min_score: float | None = None,
) -> list[Hit]:
    """The ``k`` live entries of ``snap`` closest to the query ``vector``, best first.

    ``source_prefix`` keeps only sources starting with it; ``min_score`` drops hits scoring below it.
    """
    check_k(k)
    mask = snap.alive
    if source_prefix:
        by_source = snap.source_mask(source_prefix)
        mask = by_source if mask is None else mask & by_source
    ranked = vector_top(snap, vector, k, mask=mask)
    hits = []
    for rank, (row, score) in enumerate(ranked, start=1):
        if min_score is not None and score < min_score:
            break
        e = snap.entry(row)
        hits.append(
            Hit(
                rank,
                score,
                e.id,
                e.source,
                e.page,
                e.chunk,
                e.content,
                e.timestamp,
                section=e.section,
                title=e.title,
            )
        )
    return hits


def rank_store(store: Store, vector: FloatMatrix, k: int) -> list[Hit]:
    """The ``k`` entries of ``store`` closest to the query ``vector``, best first."""
    return rank_snapshot(store.snapshot(), vector, k)


def search_store(store: Store, embedder: Embedder, query: str, k: int, *, prefix: str = "") -> list[Hit]:
    """The ``k`` chunks of ``store`` closest to ``prefix + query``, best first."""
    if not query.strip():
        raise UsageError("the query is empty")
    check_k(k)
    if store.count == 0:
        return []
    return rank_store(store, embedder.embed([prefix + query])[0], k)
