"""The fusion on arrays (``fused_scores``, ``fuse(limit=...)``, ``_fuse_files``) against the plain
per-key arithmetic it replaced: the same keys, scores, ranks and order, ties included."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pytest

from daemon.query.fuse import NORM_DEPTH, Fused, fuse
from daemon.query.options import SearchOptions
from daemon.query.search import _fuse_files


def reference(
    vector: Sequence[tuple[Hashable, float]],
    keyword: Sequence[tuple[Hashable, float]],
    method: str,
    rrf_k: float,
    alpha: float,
) -> list[Fused]:
    """The per-key fusion as it was written before the arrays (one dict lookup per key and side)."""
    v = {key: (rank, score) for rank, (key, score) in enumerate(vector, start=1)}
    w = {key: (rank, score) for rank, (key, score) in enumerate(keyword, start=1)}
    keys = dict.fromkeys([key for key, _ in vector] + [key for key, _ in keyword])

    def normaliser(ranked: Sequence[tuple[Hashable, float]]):
        if not ranked:
            return lambda s: 0.0
        scores = [s for _, s in ranked[:NORM_DEPTH]]
        lo, hi = min(scores), max(scores)
        if hi - lo <= 1e-12:
            return lambda s: 1.0 if s >= hi else 0.0
        return lambda s: max(0.0, (s - lo) / (hi - lo))

    nv, nw = normaliser(vector), normaliser(keyword)

    def fused(key: Hashable) -> float:
        if method == "rrf":
            return sum(1.0 / (rrf_k + side[key][0]) for side in (v, w) if key in side)
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
    out.sort(key=lambda f: -f.score)
    return out


Ranked = list[tuple[int, float]]


def ranked_lists(rng: random.Random, n: int, shared: float, levels: int) -> tuple[Ranked, Ranked]:
    """Two ranked lists of ``n`` keys, a share of them in both; scores on ``levels`` steps (ties;
    one level: a flat list)."""
    vec_keys = rng.sample(range(3 * n), n)
    kw_keys = [k if rng.random() < shared else 3 * n + i for i, k in enumerate(rng.sample(vec_keys, n))]
    vec = sorted(((k, rng.randrange(levels) / levels) for k in vec_keys), key=lambda x: -x[1])
    kw = sorted(((k, 20.0 * rng.randrange(levels) / levels) for k in kw_keys), key=lambda x: -x[1])
    return vec, kw


@pytest.mark.parametrize("method,rrf_k,alpha", [("convex", 60, 0.5), ("convex", 60, 0.3), ("convex", 60, 1.0),
                                                 ("rrf", 60, 0.5), ("rrf", 10.5, 0.5)])  # fmt: skip
def test_the_arrays_fuse_exactly_as_the_per_key_arithmetic(method: str, rrf_k: float, alpha: float) -> None:
    rng = random.Random(7)
    for n, shared, levels in [(0, 0.5, 10), (1, 1.0, 10), (40, 0.5, 7), (900, 0.3, 50), (500, 0.9, 1)]:
        vec, kw = ranked_lists(rng, n, shared, levels)
        for a, b in [(vec, kw), (vec, []), ([], kw), (vec[: n // 3], kw)]:
            want = reference(a, b, method, rrf_k, alpha)
            got = fuse(a, b, method=method, rrf_k=rrf_k, alpha=alpha)
            assert got == want
            assert [type(f.score) for f in got] == [float] * len(got)
            assert fuse(a, b, method=method, rrf_k=rrf_k, alpha=alpha, limit=5) == want[:5]


def test_a_key_twice_in_one_list_is_refused() -> None:
    with pytest.raises(ValueError):
        fuse([("a", 1.0), ("a", 0.5)], [])
    with pytest.raises(ValueError):
        fuse([("a", 1.0)], [("b", 2.0), ("b", 1.0)])


@dataclass(frozen=True)
class _Row:
    source: str


@dataclass(frozen=True)
class _Snap:
    rows: list[_Row]


def reference_files(snap: _Snap, vec: Ranked, kw: Ranked, opts: SearchOptions) -> list[tuple[object, ...]]:
    """Hybrid files as before: the whole chunk fusion, its best chunk per file, the files fused."""
    how = (opts.fusion, opts.rrf_k, opts.alpha)

    def best_per_file(items):
        seen, out = set(), []
        for item in items:
            if snap.rows[item[0]].source not in seen:
                seen.add(snap.rows[item[0]].source)
                out.append(item)
        return out

    shown: dict[str, int] = {}
    for f in reference(vec, kw, *how):
        shown.setdefault(snap.rows[f.key].source, f.key)
    vf = [(snap.rows[r].source, s) for r, s in best_per_file(vec)]
    kf = [(snap.rows[r].source, s) for r, s in best_per_file(kw)]
    files = [
        (shown[f.key], f.score, f.vector_rank, f.vector_score, f.keyword_rank, f.keyword_score)
        for f in reference(vf, kf, *how)
    ]
    return files


def once(ranked: Ranked) -> Ranked:
    """Each row at its first place only (a side never returns a row twice)."""
    seen: set[int] = set()
    return [(r, s) for r, s in ranked if not (r in seen or seen.add(r))]


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_files_are_fused_and_shown_as_before(fusion: str) -> None:
    rng = random.Random(11)
    for chunks, per_file, levels in [(50, 1, 10), (3000, 40, 30), (3000, 3, 5), (800, 200, 1000)]:
        snap = _Snap([_Row(f"doc{i // per_file}") for i in range(chunks)])
        vec, kw = ranked_lists(rng, min(1200, chunks // 2), 0.4, levels)
        vec, kw = once([(r % chunks, s) for r, s in vec]), once([(r % chunks, s) for r, s in kw])
        want = reference_files(snap, vec, kw, SearchOptions(k=1, fusion=fusion))
        for k in (1, 5, 10, 1000):
            got, files = _fuse_files(snap, vec, kw, SearchOptions(k=k, fusion=fusion))
            assert got == want[:k]
            assert files == len(want)


def test_a_chunk_is_credited_with_its_files_evidence_on_each_side() -> None:
    # File a: its title chunk a1 holds the query's words, its body a2 the meaning; file b's one
    # chunk has some of both. Alone, b1 leads; credited with its file's words, a2 does.
    vec = [("a2", 0.80), ("b1", 0.70), ("x1", 0.40), ("a1", 0.30)]
    kw = [("a1", 9.0), ("b1", 6.0), ("y1", 1.0)]

    def file_of(key: str) -> str:
        return key[0]

    plain = [f.key for f in fuse(vec, kw)]
    assert plain[0] == "b1"
    fused = fuse(vec, kw, group_of=file_of)
    keys = [f.key for f in fused]
    assert keys[:2] == ["a2", "a1"]
    # a2: half its own (1.0 vector, 0 keyword), half file a's best on each side (1.0, 1.0).
    assert fused[0].score == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 1.0) + 0.5 * (0.5 * 0.0 + 0.5 * 1.0))
    # The sides' own ranks and scores are shown unchanged.
    assert (fused[0].vector_rank, fused[0].vector_score, fused[0].keyword_rank) == (1, 0.80, None)
    # Lowest on both sides (0 after min-max): no credit from a group.
    assert fuse([("a1", 1.0), ("a2", 0.0)], [("a1", 1.0), ("z", 0.0)], group_of=file_of)[-1].score == 0.0
    # Each key its own group: the same scores as without groups, for both methods.
    for method in ("convex", "rrf"):
        assert fuse(vec, kw, method=method, group_of=lambda k: k) == fuse(vec, kw, method=method)
