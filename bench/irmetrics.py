"""Ranking metrics of the retrieval benchmark, and the fusions it compares.

Metrics follow trec_eval's definitions (checked against ir-measures in
tests/bench/test_irmetrics.py): nDCG@k with the judgement as the gain and ``log2(rank + 1)`` as
the discount, the ideal ranking made from every judged document; recall@k over the documents
judged relevant (grade > 0); MRR@k the reciprocal rank of the first relevant one, 0 when none
is in the top k. A run is a ranked list of document ids, best first.

Fusions take two runs with their scores (``{doc: score}``): reciprocal-rank fusion, and convex
combinations of min-max or z-score normalised scores, where a document missing from one list
gets that list's lowest normalised score.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]  # query -> document -> grade
Scores = Mapping[str, float]  # document -> score, higher is better


def ndcg_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """nDCG@k of one query's ranking against its graded judgements."""
    dcg = sum(judged.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top ``k``."""
    relevant = {doc for doc, g in judged.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document in the top ``k``, else 0."""
    for i, doc in enumerate(ranked[:k]):
        if judged.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(runs: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, recall@100 and MRR@10 over the queries of ``qrels`` (a missing run scores 0)."""
    rows = [
        (
            ndcg_at(runs.get(q, ()), judged, 10),
            recall_at(runs.get(q, ()), judged, 100),
            mrr_at(runs.get(q, ()), judged, 10),
        )
        for q, judged in qrels.items()
    ]
    return {
        "ndcg@10": statistics.fmean(r[0] for r in rows),
        "recall@100": statistics.fmean(r[1] for r in rows),
        "mrr@10": statistics.fmean(r[2] for r in rows),
    }


def ranking(scores: Scores) -> list[str]:
    """Documents by score, best first (ties by id, so the order is deterministic)."""
    return sorted(scores, key=lambda d: (-scores[d], d))


def rrf(runs: Sequence[Sequence[str]], k: int) -> dict[str, float]:
    """Reciprocal-rank fusion: each document scores sum(1 / (k + rank)) over the runs."""
    fused: dict[str, float] = {}
    for run in runs:
        for i, doc in enumerate(run):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + i + 1)
    return fused


def _normalised(scores: Scores, how: str) -> dict[str, float]:
    values = list(scores.values())
    if not values:
        return {}
    if how == "minmax":
        lo, hi = min(values), max(values)
        span = hi - lo
        return {d: (s - lo) / span if span > 0 else 1.0 for d, s in scores.items()}
    if how == "zscore":
        mean = statistics.fmean(values)
        sd = statistics.pstdev(values)
        return {d: (s - mean) / sd if sd > 0 else 0.0 for d, s in scores.items()}
    raise ValueError(f"unknown normalisation {how!r}")


def convex(vector: Scores, keyword: Scores, alpha: float, how: str) -> dict[str, float]:
    """``alpha * vector + (1 - alpha) * keyword`` of normalised scores (``how``: minmax, zscore)."""
    v, kw = _normalised(vector, how), _normalised(keyword, how)
    v_floor = min(v.values(), default=0.0)
    kw_floor = min(kw.values(), default=0.0)
    return {d: alpha * v.get(d, v_floor) + (1 - alpha) * kw.get(d, kw_floor) for d in v.keys() | kw.keys()}
