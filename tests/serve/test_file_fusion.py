"""`group_by: "file"` in hybrid mode fuses files, not chunks: over real HTTP with the real model.

A file whose keyword match and meaning match are different chunks holds both sides' evidence,
but no single chunk of it does; fusing chunks and keeping each file's best ranked it below a
file that only one side found (before chunks were credited with their file's evidence).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import serving_docs

QUERY = "GK-7731 car too hot climbing a hill"
DOCS: dict[str, list[str]] = {
    # The part number in one chunk, the meaning of the rest of the query in the other.
    "manuals/split.md": [
        "Spare parts: the gasket GK-7731 for the intake manifold.",
        "When the engine overheats on a long ascent, pull over and let the radiator cool "
        "before opening the cap.",
    ],
    # Close in meaning, none of the query's words.
    "manuals/meaning.md": [
        "If the motor overheats going up a steep slope, stop and allow the coolant to settle "
        "before opening it."
    ],
    "manuals/words.md": [
        "A car climbing a long hill in summer can get hot; check the oil and the tyres before the trip."
    ],
    "notes/walk.md": [
        "The walk up the hill behind the village takes an hour; the view of the valley is lovely."
    ],
    "notes/club.md": ["The climbing club meets on Tuesdays at the sports hall in town."],
    "notes/garden.md": ["Planting tomatoes: water them every evening and tie the stems to canes."],
    "notes/bread.md": ["Knead the dough for ten minutes, then leave it to rise near the stove."],
    "notes/tax.md": ["The tax return is due at the end of January; keep every receipt."],
}


@pytest.fixture(scope="module")
def sock(default_model: Path) -> Iterator[Path]:
    with serving_docs(default_model, DOCS, prefix="embedd-filefusion-") as (socket, _):
        yield socket


def hits(sock: Path, **body: Any) -> list[dict[str, Any]]:
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://embedd", timeout=60
    ) as c:
        r = c.post("/v1/search", json={"query": QUERY, "k": len(DOCS) + 1, **body})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["results"]
    return found


def test_a_file_matched_by_words_in_one_chunk_and_meaning_in_another_gets_both(sock: Path) -> None:
    chunk_hits = hits(sock)
    chunks = [h["source"] for h in chunk_hits]
    # The premise: split.md's part number is in one of its chunks only.
    split_chunks = [h for h in chunk_hits if h["source"] == "manuals/split.md"]
    assert sorted(h["keyword_rank"] is None for h in split_chunks) == [False, True], split_chunks
    # A chunk search credits each chunk with its file's best on each side (fuse.CONTEXT): both
    # of split.md's chunks rank above meaning.md, which the vectors alone found. (Without the
    # credit neither did: each had one side's evidence.)
    last_split = max(i for i, source in enumerate(chunks) if source == "manuals/split.md")
    assert last_split < chunks.index("manuals/meaning.md"), chunks
    files = hits(sock, group_by="file")
    order = [h["source"] for h in files]
    assert len(order) == len(set(order)) == len(DOCS)
    assert order.index("manuals/split.md") < order.index("manuals/meaning.md"), order
    split = files[order.index("manuals/split.md")]
    # Its side ranks and scores are the file's: its best chunk's on each side.
    by_vector = hits(sock, mode="vector", group_by="file")
    by_keyword = hits(sock, mode="keyword", group_by="file")
    v = next(h for h in by_vector if h["source"] == "manuals/split.md")
    w = next(h for h in by_keyword if h["source"] == "manuals/split.md")
    assert (split["vector_rank"], split["vector_score"]) == (by_vector.index(v) + 1, v["score"])
    assert (split["keyword_rank"], split["keyword_score"]) == (by_keyword.index(w) + 1, w["score"])
    assert v["chunk"] != w["chunk"]  # the two sides' evidence is on different chunks
    # Shown by the chunk the words matched (the chunk fusion's best for the file), with its snippet.
    assert split["chunk"] == 0 and split["matched_terms"] == ["gk-7731"]


def test_files_are_fused_with_rrf_too(sock: Path) -> None:
    files = hits(sock, group_by="file", fusion="rrf")
    rank = {
        side: {h["source"]: i for i, h in enumerate(hits(sock, mode=side, group_by="file"), start=1)}
        for side in ("vector", "keyword")
    }
    for h in files:  # each file's score is the sum of 1/(60 + its rank) in each side's file ranking
        assert h["vector_rank"] == rank["vector"][h["source"]]
        assert h["keyword_rank"] == rank["keyword"].get(h["source"])
        expect = sum(1 / (60 + h[f"{side}_rank"]) for side in ("vector", "keyword") if h[f"{side}_rank"])
        assert abs(h["score"] - expect) < 1e-9
