"""Fusing a vector ranking and a keyword ranking into one.

Two methods, chosen per request (``fusion``), with their constants as parameters so a benchmark
can compare them through the API:

- ``convex`` (the default, ``options.FUSION``): ``alpha * v + (1 - alpha) * w``, where ``v``
  and ``w`` are the cosine and the BM25 score min-max normalised over each list's best
  ``NORM_DEPTH`` candidates (0 below them, and for a chunk a list does not hold). It keeps how
  far ahead a hit is, which ranks alone lose. A fixed depth, not the whole list, keeps a
  request's first hits the same whatever its ``k``.
- ``rrf``: reciprocal-rank fusion, ``sum(1 / (rrf_k + rank))`` over the lists a chunk appears
  in (Cormack et al. 2009, k = 60). Uses ranks only, so the two scores' scales do not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from daemon.query.options import ALPHA, FUSION, RRF_K, Fusion

K = TypeVar("K", bound=Hashable)

# How many of a list's best scores its normalisation spans (and so how many candidates a hybrid
# search takes from each side at least). Deeper is steadier: on bench/retrieval.py nDCG@10 at
# alpha 0.5 went 0.436 / 0.448 / 0.449 (CISI) and 0.516 / 0.524 / 0.534 (CACM) at 30 / 100 / 300.
NORM_DEPTH = 300


@dataclass(frozen=True)
class Fused:
    """One fused candidate: its fused score and, per side, its rank and score (None if absent)."""

    key: Hashable
    score: float
    vector_rank: int | None
    vector_score: float | None
    keyword_rank: int | None
    keyword_score: float | None


def fuse(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    *,
    method: Fusion = FUSION,
    rrf_k: float = RRF_K,
    alpha: float = ALPHA,
) -> list[Fused]:
    """Both ranked lists (best first, as (key, score)) fused, best first; ties keep vector order."""
    v = {key: (rank, score) for rank, (key, score) in enumerate(vector, start=1)}
    w = {key: (rank, score) for rank, (key, score) in enumerate(keyword, start=1)}
    keys: dict[K, None] = dict.fromkeys([key for key, _ in vector] + [key for key, _ in keyword])
    if method == "rrf":

        def fused(key: K) -> float:
            return sum(1.0 / (rrf_k + side[key][0]) for side in (v, w) if key in side)

    else:
        nv, nw = _normaliser(vector), _normaliser(keyword)

        def fused(key: K) -> float:
            a = nv(v[key][1]) if key in v else 0.0
            b = nw(w[key][1]) if key in w else 0.0
            return alpha * a + (1.0 - alpha) * b

    out = [
        Fused(
            key,
            fused(key),
            v[key][0] if key in v else None,
            v[key][1] if key in v else None,
            w[key][0] if key in w else None,
            w[key][1] if key in w else None,
        )
        for key in keys
    ]
    out.sort(key=lambda f: -f.score)  # stable: the vector side's order breaks ties
    return out


def _normaliser(ranked: Sequence[tuple[K, float]]) -> Callable[[float], float]:
    if not ranked:
        return lambda s: 0.0
    scores = [s for _, s in ranked[:NORM_DEPTH]]
    lo, hi = min(scores), max(scores)
    if hi - lo <= 1e-12:
        return lambda s: 1.0 if s >= hi else 0.0
    return lambda s: max(0.0, (s - lo) / (hi - lo))
