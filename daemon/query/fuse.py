"""Fusing a vector ranking and a keyword ranking into one.

Two methods, chosen per request (``fusion``), with their constants as parameters so a benchmark
can compare them through the API:

- ``convex`` (the default, ``options.FUSION``): ``alpha * v + (1 - alpha) * w``, where ``v``
  and ``w`` are the cosine and the BM25 score min-max normalised over each list's best
  ``NORM_DEPTH`` candidates (0 below them, and for a chunk a list does not hold). It keeps how
  far ahead a hit is, which ranks alone lose. A fixed depth, not the whole list, keeps a
  request's first hits the same whatever its ``k``. In a hybrid chunk search each side's part
  is averaged with the best part of the chunk's file on that side (``CONTEXT``, ``group_of``).
- ``rrf``: reciprocal-rank fusion, ``sum(1 / (rrf_k + rank))`` over the lists a chunk appears
  in (Cormack et al. 2009, k = 60). Uses ranks only, so the two scores' scales do not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from daemon.query.options import ALPHA, FUSION, RRF_K, Fusion

K = TypeVar("K", bound=Hashable)

# How many of a list's best scores its normalisation spans (and so how many candidates a hybrid
# search takes from each side at least). Deeper is steadier: on bench/retrieval.py nDCG@10 at
# alpha 0.5 went 0.436 / 0.448 / 0.449 (CISI) and 0.516 / 0.524 / 0.534 (CACM) at 30 / 100 / 300.
NORM_DEPTH = 300
# How much of a chunk's score on each side its file's best chunk there makes, in a hybrid chunk
# search (``fused_scores(group_of=...)``): passage evidence and document evidence weighed
# alike (Callan, SIGIR 1994). On bench/retrieval.py nDCG@10 by document went 0.448 -> 0.455
# (CISI) and 0.535 -> 0.540 (CACM); 0.25 gave 0.449 and 0.538 (docs/benchmarks.md).
CONTEXT = 0.5


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
    limit: int | None = None,
    group_of: Callable[[K], Hashable] | None = None,
) -> list[Fused]:
    """Both ranked lists (best first, as (key, score); a key once per list) fused, best first;
    ties keep vector order. ``limit`` keeps only the best ``limit`` (the same first ones);
    ``group_of`` (a chunk's file) adds each group's evidence (see ``fused_scores``)."""
    scored = fused_scores(vector, keyword, method=method, rrf_k=rrf_k, alpha=alpha, group_of=group_of)
    order = scored.order()
    out = []
    for p in order[: len(order) if limit is None else max(limit, 0)]:
        i, j = scored.vector_at(p), int(scored.keyword_at[p])
        out.append(
            Fused(
                scored.keys[p],
                float(scored.score[p]),
                i + 1 if i >= 0 else None,
                vector[i][1] if i >= 0 else None,
                j + 1 if j >= 0 else None,
                keyword[j][1] if j >= 0 else None,
            )
        )
    return out


@dataclass(frozen=True)
class Scored(Generic[K]):
    """Every key of both lists with its fused score, in the order that breaks ties: the vector
    list's keys first, in its order, then the keys only the keyword list holds."""

    keys: list[K]
    score: npt.NDArray[np.float64]
    keyword_at: npt.NDArray[np.int64]
    """Each key's index in the keyword list, -1 when it holds none."""
    vectors: int
    """How many keys the vector list holds (they are ``keys[:vectors]``, in its order)."""

    def vector_at(self, p: int) -> int:
        """The index in the vector list of ``keys[p]``, -1 when it holds none."""
        return p if p < self.vectors else -1

    def order(self) -> list[int]:
        """Positions in ``keys``, best fused score first (stable: ties keep this order)."""
        ranked: list[int] = np.argsort(-self.score, kind="stable").tolist()
        return ranked


def fused_scores(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    *,
    method: Fusion = FUSION,
    rrf_k: float = RRF_K,
    alpha: float = ALPHA,
    group_of: Callable[[K], Hashable] | None = None,
) -> Scored[K]:
    """Every key's fused score, computed on arrays (the arithmetic ``fuse`` documents, in float64).

    With ``group_of``, each side's part of a key's score (its normalised score, or its
    reciprocal rank) is averaged with the best part among its group's keys on that side
    (``CONTEXT``): a chunk is credited with what its file's other chunks hold, on each side
    (a keyword match in the title chunk, the meaning in the next one). A key with nothing of
    its own on either side (below both normalisation depths) gets no credit from its group, and
    within a group the keys keep their order.
    """
    pos = {key: p for p, (key, _) in enumerate(vector)}
    vectors = len(pos)
    at = np.fromiter((pos.setdefault(key, len(pos)) for key, _ in keyword), np.int64, len(keyword))
    if vectors < len(vector) or len(np.unique(at)) < len(at):
        raise ValueError("a key appears twice in one list")  # rows and files are unique per side
    keys = list(pos)
    nv, n = len(vector), len(pos)
    keyword_at = np.full(n, -1, dtype=np.int64)
    keyword_at[at] = np.arange(len(keyword))
    v, w = np.zeros(n), np.zeros(n)
    if method == "rrf":
        v[:nv] = 1.0 / (rrf_k + np.arange(1, nv + 1))
        w[at] = 1.0 / (rrf_k + np.arange(1, len(keyword) + 1))
    else:
        v[:nv] = _normalised(vector)
        w[at] = _normalised(keyword)
    if group_of is not None and n:
        v, w = _in_context(v, w, [group_of(k) for k in keys])
    score: npt.NDArray[np.float64] = v + w if method == "rrf" else alpha * v + (1.0 - alpha) * w
    return Scored(keys, score, keyword_at, nv)


def _in_context(
    v: npt.NDArray[np.float64], w: npt.NDArray[np.float64], groups: list[Hashable]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each side's parts averaged (``CONTEXT``) with the best part of the key's group on that side."""
    codes: dict[Hashable, int] = {}
    at = np.fromiter((codes.setdefault(g, len(codes)) for g in groups), np.int64, len(groups))
    own = (v > 0) | (w > 0)
    out = []
    for side in (v, w):
        best = np.zeros(len(codes))
        np.maximum.at(best, at, side)
        out.append(np.where(own, (1.0 - CONTEXT) * side + CONTEXT * best[at], side))
    return out[0], out[1]


def _normalised(ranked: Sequence[tuple[K, float]]) -> npt.NDArray[np.float64]:
    """Min-max over the best ``NORM_DEPTH`` scores, 0 below them (all 1 at the top of a flat list)."""
    scores = np.fromiter((s for _, s in ranked), np.float64, len(ranked))
    if not len(scores):
        return scores
    lo, hi = float(scores[:NORM_DEPTH].min()), float(scores[:NORM_DEPTH].max())
    if hi - lo <= 1e-12:
        return np.where(scores >= hi, 1.0, 0.0)
    out: npt.NDArray[np.float64] = np.maximum(0.0, (scores - lo) / (hi - lo))
    return out
