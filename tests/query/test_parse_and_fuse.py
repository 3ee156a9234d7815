"""Unit tests of the query parser (user text -> a safe FTS5 expression) and of fusion."""

from __future__ import annotations

import sqlite3

import pytest

from daemon.query.fuse import fuse
from daemon.query.keyword import MAX_TERMS, parse
from daemon.store.tokens import extra_terms


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("saveStore", '("savestore" OR "save store")'),
        ("save_store", '("save store" OR "savestore")'),
        ("save store", '"save" OR "store"'),
        ("E-4012", '("e 4012" OR "e4012")'),
        ("東京都", '"東京" OR "京都"'),
        ("東", '"東"'),
        ('"exact words" here', '"exact words" OR "exact" OR "words" OR "here"'),
        ('"exact words"', '"exact words"'),  # only phrases: they must appear
        ('"exact words" "and these"', '"exact words" AND "and these"'),
        ("disk full, the disk is full", '"disk" OR "full" OR "disk" OR "full"'),  # said twice, counts twice
        ("a a a a a a", '"a" OR "a" OR "a" OR "a"'),  # up to MAX_REPEAT times
        ('an "unbalanced quote', '"unbalanced" OR "quote"'),
        ("the tomatoes of June", '"tomatoes" OR "june"'),
        ("the of", '"the" OR "of"'),  # only common words: kept
        (
            "NEAR(a b) AND c* -d ^e f:g",
            '("near a" OR "neara") OR "b" OR "c" OR "d" OR "e" OR ("f g" OR "fg")',
        ),
        ("🙂 !!! ((", ""),
    ],
)
def test_queries_become_quoted_terms(query: str, match: str) -> None:
    assert parse(query).match() == match


def test_every_expression_is_valid_fts5_and_work_is_bounded() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(a, tokenize='porter unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t VALUES ('the save store of E-4012')")
    hostile = ['"', '""', "AND", "OR NOT", "a*", "-", ":", "^", ")(", "x\x00y", "\ufffd", "🙂a🙂", "NEAR/3"]
    for q in [*hostile, " ".join(f"w{i}" for i in range(5000))]:
        kq = parse(q)
        assert len(kq.terms) + len(kq.required) <= MAX_TERMS
        if not kq.empty:
            conn.execute("SELECT * FROM t WHERE t MATCH ?", (kq.match(),)).fetchall()


def test_documents_get_camel_parts_and_cjk_grams() -> None:
    assert extra_terms("def saveStore(x)") == "save Store"
    assert extra_terms("東京都 ok") == "東 京 都 東京 京都"
    assert extra_terms("plain words") == ""


def test_rrf_and_convex() -> None:
    vec = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    kw = [("c", 12.0), ("d", 3.0)]
    rrf = fuse(vec, kw, method="rrf")
    assert [f.key for f in rrf] == ["c", "a", "b", "d"]
    c = rrf[0]
    assert c.vector_rank == 3 and c.keyword_rank == 1 and c.score == pytest.approx(1 / 63 + 1 / 61)
    assert rrf[-1].vector_rank is None and rrf[-1].keyword_score == 3.0
    assert [f.key for f in fuse(vec, kw, method="convex", alpha=1.0)][:3] == ["a", "b", "c"]
    assert fuse(vec, kw, method="convex", alpha=0.0)[0].key == "c"
    assert fuse([], []) == []
    # The default is the convex combination at alpha 0.5 (chosen on bench/retrieval.py).
    default = fuse(vec, kw)
    assert [f.key for f in default] == [f.key for f in fuse(vec, kw, method="convex", alpha=0.5)]
    assert default[0].score == pytest.approx(0.5 * (0.1 - 0.1) / 0.8 + 0.5 * 1.0)


def test_convex_fusion_of_the_first_hits_does_not_depend_on_how_deep_the_lists_go() -> None:
    import random

    from daemon.query.fuse import NORM_DEPTH

    rng = random.Random(3)
    vec = sorted(((f"c{i}", rng.random()) for i in range(3 * NORM_DEPTH)), key=lambda x: -x[1])
    keys = rng.sample(range(900), 3 * NORM_DEPTH)
    kw = sorted(((f"c{i}", 30 * rng.random()) for i in keys), key=lambda x: -x[1])
    deep = [f.key for f in fuse(vec, kw)][:10]
    shallow = [f.key for f in fuse(vec[:NORM_DEPTH], kw[:NORM_DEPTH])][:10]
    assert deep == shallow
    # Below the depth a side counts 0, like a chunk it does not hold.
    low = {f.key: f for f in fuse(vec, [])}
    assert low[vec[-1][0]].score == 0.0 and low[vec[0][0]].score == 0.5
