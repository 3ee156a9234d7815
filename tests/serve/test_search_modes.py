"""`POST /v1/search` in every mode over real HTTP, the real model and a store with its keyword index."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import serving_docs

from daemon.query.hit import Hit
from daemon.store.store import Store

DAY_NS = 86_400 * 1_000_000_000
JAN_2026 = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z

DOCS: dict[str, list[str]] = {
    # The model alone ranks order-a third for "XK-4471": the others look more like the query.
    "parts/order-a.txt": [
        "Order the replacement valve, part number XK-4471, from the supplier catalogue. "
        "The hose clamps arrive separately."
    ],
    "parts/order-b.txt": [
        "Order the replacement valve, part number QL-1138, from the supplier catalogue. "
        "The valve fits the XK series pumps and ships in 4 days."
    ],
    "parts/order-c.txt": ["Order the replacement pump, part number ZT-9902, from the supplier catalogue."],
    "parts/older.txt": [
        "Part XK-4470 and XK-4472 are the valves for the older pumps; the 4471 fitting is discontinued."
    ],
    "notes/car.md": [
        "The automobile refused to start this morning because its battery had gone completely flat."
    ],
    "notes/garden.md": [
        "Planting tomatoes: water them every evening and tie the stems to canes.",
        "Tomatoes ripen faster in a sunny greenhouse.",
    ],
    "notes/tokyo.md": ["東京都の天気は晴れです。明日は雨が降るでしょう。"],
    "code/store.py": ["def save_store(path):\n    write the embeddings to disk atomically"],
    "code/store.js": ["function saveStore(path) { return write(path); }"],
    "code/errors.rst": ["Error E-4012 means the boot loader found no disk."],
    "old/ledger.txt": ["The ledger of 1998 lists every tomato sale at the market."],
}
MTIME = {s: (JAN_2026 - 400 * DAY_NS if s.startswith("old/") else JAN_2026 + 10 * DAY_NS) for s in DOCS}

HOSTILE = [
    '"',
    '"unbalanced quote',
    "AND",
    "OR OR OR",
    "tomato NEAR/2 water",
    "NOT tomatoes",
    "tomat*",
    "-tomatoes",
    "content:tomatoes",
    "^start",
    "((( tomatoes",
    "tomatoes )))",
    "🍅🍅 emoji only",
    "🍅",
    "tomato\x00nul",
    "!!! ??? ...",
    "x" * 10_000,
    " ".join(f"w{i}" for i in range(3000)),
    '"" AND "',
    "{}[]<>|\\/",
]


@pytest.fixture(scope="module")
def server(default_model: Path) -> Iterator[tuple[Path, Store]]:
    with serving_docs(default_model, DOCS, MTIME, prefix="embedd-modes-") as served:
        yield served


def post(sock: Path, body: dict[str, Any] | bytes) -> httpx.Response:
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://embedd", timeout=60
    ) as c:
        if isinstance(body, bytes):
            return c.post("/v1/search", content=body, headers={"content-type": "application/json"})
        return c.post("/v1/search", json=body)


def sources(sock: Path, **body: Any) -> list[str]:
    r = post(sock, body)
    assert r.status_code == 200, r.text
    return [h["source"] for h in r.json()["results"]]


def test_a_part_number_is_found_by_hybrid_where_vectors_alone_miss_it(server: tuple[Path, Store]) -> None:
    sock, _ = server
    query = "XK-4471"
    vector = sources(sock, query=query, k=1, mode="vector")
    assert vector != ["parts/order-a.txt"]  # the premise: the model alone does not find it
    assert sources(sock, query=query, k=1) == ["parts/order-a.txt"]
    assert sources(sock, query=query, k=1, mode="keyword") == ["parts/order-a.txt"]
    hit = post(sock, {"query": query, "k": 1}).json()["results"][0]
    assert hit["keyword_rank"] == 1 and hit["keyword_score"] > 0 and hit["vector_rank"] is not None
    assert hit["matched_terms"] == ["xk-4471"] and "[XK-4471]" in hit["snippet"]


def test_a_paraphrase_is_found_by_hybrid_where_keywords_alone_miss_it(server: tuple[Path, Store]) -> None:
    sock, _ = server
    query = "my vehicle won't turn over, dead accumulator"
    assert "notes/car.md" not in sources(sock, query=query, k=3, mode="keyword")
    assert sources(sock, query=query, k=1, mode="vector") == ["notes/car.md"]
    assert sources(sock, query=query, k=1) == ["notes/car.md"]


def test_identifiers_and_cjk_find_their_chunk(server: tuple[Path, Store]) -> None:
    sock, _ = server
    for query in ("saveStore", "save_store", "save store"):
        assert set(sources(sock, query=query, k=2, mode="keyword")) == {"code/store.py", "code/store.js"}, (
            query
        )
    assert sources(sock, query="E-4012", k=1, mode="keyword") == ["code/errors.rst"]
    assert sources(sock, query="東京", k=1, mode="keyword") == ["notes/tokyo.md"]
    assert sources(sock, query="天気", k=1, mode="keyword") == ["notes/tokyo.md"]
    # English stemming: "ripening" finds "ripen".
    assert sources(sock, query="ripening", k=1, mode="keyword") == ["notes/garden.md"]


def test_a_quoted_phrase_alone_must_appear_and_in_a_question_ranks_first(server: tuple[Path, Store]) -> None:
    sock, _ = server
    assert sources(sock, query='"replacement pump"', k=5, mode="keyword") == ["parts/order-c.txt"]
    assert len(sources(sock, query="replacement pump", k=5, mode="keyword")) == 4
    # Inside other words a phrase is a term of its own: its holder first, the others still found.
    quoted = sources(sock, query='which orders need a "replacement pump"?', k=5, mode="keyword")
    assert quoted[0] == "parts/order-c.txt" and len(quoted) == 4


def test_every_hostile_query_is_answered_200_in_every_mode(server: tuple[Path, Store]) -> None:
    sock, _ = server
    for mode in ("hybrid", "vector", "keyword"):
        for query in HOSTILE:
            r = post(sock, {"query": query, "k": 3, "mode": mode})
            if mode == "vector" and len(query) > 2000:
                # Vectors only: a query past the model's context is refused, never truncated.
                assert r.status_code == 422 and r.json()["error"]["code"] == "context_length_exceeded"
                continue
            assert r.status_code == 200, (mode, query[:40], r.text)
            assert isinstance(r.json()["results"], list)
    # A lone surrogate escape (valid JSON, invalid Unicode) and a query with no word at all.
    r = post(sock, b'{"query": "tomato \\ud800 water", "k": 2}')
    assert r.status_code == 200, r.text
    assert r.json()["results"]
    r = post(sock, {"query": "?!", "mode": "keyword"})
    assert r.status_code == 200 and r.json()["results"] == []


def test_filters_apply_before_ranking_in_every_mode(server: tuple[Path, Store]) -> None:
    sock, _ = server
    for mode in ("hybrid", "vector", "keyword"):
        got = sources(sock, query="tomato", k=5, mode=mode, formats=["markdown"])
        assert got[0] == "notes/garden.md" and all(s.endswith(".md") for s in got), mode
        got = sources(sock, query="tomato", k=5, mode=mode, modified_before="2025-06-01")
        assert got == ["old/ledger.txt"], mode
        got = sources(sock, query="tomato", k=2, mode=mode, modified_after="2026-01-01T00:00:00Z")
        assert "old/ledger.txt" not in got and len(got) == 2, mode
        got = sources(sock, query="supplier", k=10, mode=mode, source_prefix="parts/", formats="text")
        orders = {"parts/order-a.txt", "parts/order-b.txt", "parts/order-c.txt"}
        assert orders <= set(got) and all(s.startswith("parts/") for s in got), mode
    # The keyword side filters in SQL: k hits when k exist, however many others rank higher.
    got = sources(sock, query="catalogue error tomatoes", k=1, mode="keyword", formats=["rst"])
    assert got == ["code/errors.rst"]
    bad = post(sock, {"query": "x", "formats": ["spreadsheet"]})
    assert bad.status_code == 400 and "spreadsheet" in bad.json()["error"]["message"]
    bad = post(sock, {"query": "x", "modified_after": "last tuesday"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "modified_after"


def test_group_by_file_returns_k_distinct_files(server: tuple[Path, Store]) -> None:
    sock, _ = server
    for mode in ("hybrid", "vector", "keyword"):
        chunks = sources(sock, query="tomatoes", k=3, mode=mode)
        files = sources(sock, query="tomatoes", k=3, mode=mode, group_by="file")
        # Only two files hold the word; the model ranks every file.
        assert len(files) == len(set(files)) == (2 if mode == "keyword" else 3), (mode, files)
        assert files[0] == chunks[0]
    assert chunks.count("notes/garden.md") == 2  # without grouping the file's two chunks both rank


def test_modes_fusion_and_scores(server: tuple[Path, Store]) -> None:
    sock, _ = server
    q = "water the tomato plants"
    doc = post(sock, {"query": q, "k": 4}).json()
    assert doc["mode"] == "hybrid" and doc["notes"] == []
    hits = doc["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    for h in hits:  # convex: half each side's score, min-max normalised (1 for each side's best)
        assert 0.0 <= h["score"] <= 1.0
        assert Hit.from_json(h).to_json() == h
    assert any(h["vector_rank"] == 1 or h["keyword_rank"] == 1 for h in hits[:2])
    rrf = post(sock, {"query": q, "k": 4, "fusion": "rrf"}).json()["results"]
    for h in rrf:  # RRF: the score is the sum of 1/(60 + rank) over the sides that returned it
        expect = sum(1 / (60 + h[f"{side}_rank"]) for side in ("vector", "keyword") if h[f"{side}_rank"])
        assert abs(h["score"] - expect) < 1e-9
    convex = post(sock, {"query": q, "k": 4, "fusion": "convex", "alpha": 1.0}).json()["results"]
    vector = post(sock, {"query": q, "k": 4, "mode": "vector"}).json()["results"]
    assert [h["id"] for h in convex] == [h["id"] for h in vector]  # alpha 1: the vector side alone
    assert all(h["keyword_rank"] is None for h in vector)
    keyword = post(sock, {"query": q, "k": 4, "mode": "keyword"}).json()["results"]
    assert all(h["vector_rank"] is None and h["score"] == h["keyword_score"] for h in keyword)
    for body in ({"mode": "fuzzy"}, {"fusion": "max"}, {"alpha": 2}, {"group_by": "folder"}, {"k": 1001}):
        assert post(sock, {"query": q, **body}).status_code == 400, body
    # min_score is a cosine threshold: without a mode it ranks by vectors (as it always did).
    strict = post(sock, {"query": q, "k": 5, "min_score": 0.3}).json()
    assert strict["mode"] == "vector" and all(h["score"] >= 0.3 for h in strict["results"])
    assert post(sock, {"query": q, "min_score": 0.3, "mode": "hybrid"}).status_code == 400
