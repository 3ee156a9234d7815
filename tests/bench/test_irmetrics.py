"""The benchmark's own ranking metrics against ir-measures (trec_eval's definitions), and its fusions."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import irmetrics

ir_measures = pytest.importorskip("ir_measures")


def _case(seed: int) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, runs = {}, {}
    for q in range(40):
        judged = {d: rng.choice((0, 1, 1, 2, 3)) for d in rng.sample(docs, rng.randint(1, 30))}
        if not any(judged.values()):
            judged[docs[q]] = 1
        qrels[f"q{q}"] = judged
        # Runs of varying length, some shorter than 10 and some missing relevant documents.
        runs[f"q{q}"] = rng.sample(docs, rng.choice((5, 50, 150, 250)))
    return qrels, runs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_metrics_match_ir_measures(seed: int) -> None:
    qrels, runs = _case(seed)
    # Distinct descending scores: trec_eval ranks by score, so the order is the run's own.
    run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in runs.items()}
    measures = [ir_measures.nDCG @ 10, ir_measures.R @ 100, ir_measures.RR @ 10]
    theirs = ir_measures.calc_aggregate(measures, qrels, run)
    ours = irmetrics.evaluate(runs, qrels)
    assert ours["ndcg@10"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-9)
    assert ours["recall@100"] == pytest.approx(theirs[ir_measures.R @ 100], abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(theirs[ir_measures.RR @ 10], abs=1e-9)


def test_hand_computed_case() -> None:
    judged = {"a": 2, "b": 0, "c": 1}
    ranked = ["b", "c", "x", "a"]
    # DCG = 1/log2(3) + 2/log2(5); ideal = 2/log2(2) + 1/log2(3)
    dcg = 1 / 1.5849625007211562 + 2 / 2.321928094887362
    idcg = 2 + 1 / 1.5849625007211562
    assert irmetrics.ndcg_at(ranked, judged, 10) == pytest.approx(dcg / idcg)
    assert irmetrics.recall_at(ranked, judged, 2) == 0.5
    assert irmetrics.mrr_at(ranked, judged, 10) == 0.5
    assert irmetrics.mrr_at(["b", "x"], judged, 10) == 0.0


def test_fusions() -> None:
    fused = irmetrics.rrf([["a", "b"], ["b", "c"]], k=60)
    assert irmetrics.ranking(fused) == ["b", "a", "c"]
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    vec, kw = {"a": 0.9, "b": 0.5, "c": 0.1}, {"c": 12.0, "d": 2.0}
    only_vector = irmetrics.convex(vec, kw, 1.0, "minmax")
    assert irmetrics.ranking(only_vector)[:3] == ["a", "b", "c"]
    mixed = irmetrics.convex(vec, kw, 0.5, "minmax")
    # c is last by vector (0) but first by keyword (1); d is missing from the vector list (0).
    assert mixed == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5, "d": 0.0})
    z = irmetrics.convex(vec, kw, 0.5, "zscore")
    # vector z-scores: a +1.2247, b 0, c -1.2247; keyword: c +1, d -1 (also the floor for a and b).
    assert z == pytest.approx(
        {"a": 0.5 * 1.2247449 - 0.5, "b": -0.5, "c": 0.5 - 0.5 * 1.2247449, "d": -0.5 - 0.5 * 1.2247449}
    )
