"""Ranking a store's vectors against a query vector (exact cosine, numpy), and the checks before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.embed.embedder import Embedder, FloatMatrix
from daemon.errors import FingerprintMismatchError, UsageError
from daemon.query.hit import Hit
from daemon.store.store import Store


def top_k(matrix: FloatMatrix, query: FloatMatrix, k: int, *, normalized: bool) -> list[tuple[int, float]]:
    """Rows of ``matrix`` most cosine-similar to ``query``, best first, as (row, score).

    With ``normalized`` the rows are taken as unit vectors already; otherwise each score is
    divided by its row's norm, which costs one float per row instead of a normalised copy.
    """
    n = len(matrix)
    if n == 0 or k <= 0:
        return []
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = matrix @ q
    if not normalized:
        scores /= np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
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


def rank_store(store: Store, vector: FloatMatrix, k: int) -> list[Hit]:
    """The ``k`` entries of ``store`` closest to the query ``vector``, best first."""
    if k < 1:
        raise UsageError(f"-k must be at least 1, not {k}")
    if store.count == 0:
        return []
    fp = store.fingerprint
    ranked = top_k(store.matrix(), vector, k, normalized=fp is not None and fp.normalize)
    hits = []
    for rank, (row, score) in enumerate(ranked, start=1):
        e = store.entry(row)
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


def search_store(store: Store, embedder: Embedder, query: str, k: int, *, prefix: str = "") -> list[Hit]:
    """The ``k`` chunks of ``store`` closest to ``prefix + query``, best first."""
    if not query.strip():
        raise UsageError("the query is empty")
    if k < 1:
        raise UsageError(f"-k must be at least 1, not {k}")
    if store.count == 0:
        return []
    return rank_store(store, embedder.embed([prefix + query])[0], k)
