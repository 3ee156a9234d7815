"""Ranking a store's vectors against a query vector (exact cosine, numpy), and the checks before it.

The daemon, ``embedd search`` without a daemon and the MCP server all rank through
``rank_snapshot``, so they return the same hits in the same order.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from daemon.embed.embedder import Embedder, FloatMatrix
from daemon.errors import FingerprintMismatchError, UsageError
from daemon.query.hit import Hit
from daemon.store.snapshot import BoolMask, Snapshot
from daemon.store.store import Store

# From this many rows the scores are computed in two halves on two threads (numpy releases
# the GIL in einsum): 10.3 ms -> 6.5 ms for 100,000 x 384 on the 2-vCPU EPYC. Each row's score
# is computed alone either way, so the halves give the very same numbers.
SPLIT_ROWS = 20_000
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
    return [(int(i), float(scores[i])) for i in order]


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
    ranked = top_k(snap.matrix, vector, k, normalized=snap.normalized, mask=mask)
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
