"""The keyword sidecar's in-memory postings rank exactly as FTS5's bm25() does, through every change."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.query.keyword import parse
from daemon.store import postings as postings_mod
from daemon.store.keyword import KeywordIndex
from daemon.store.postings import Postings

WORDS = [
    "pump",
    "valve",
    "harbour",
    "survey",
    "rainfall",
    "flour",
    "rye",
    "budget",
    "festival",
    "tram",
    "ledger",
    "invoice",
    "sensor",
    "latency",
    "payment",
    "service",
    "engineer",
    "remote",
    "onboarding",
    "licence",
    "library",
    "winter",
    "water",
    "table",
    "ripening",
    "tomatoes",
    "garden",
    "E-4012",
    "saveStore",
    "save_store",
    "東京都",
    "café",
    "naïve",
]

QUERIES = [
    "pump valve",
    "the harbour survey of rainfall",
    "budget budget festival",  # a repeated word counts twice
    "save store",
    "saveStore",
    "E-4012 sensor",
    "東京",
    "cafe naive",
    'which orders need a "replacement pump"?',
    "ripening tomatoes in the garden",
]


@dataclass(frozen=True)
class R:
    id: str
    content: str
    source: str
    chunk: int
    hash: str
    page: int | None = None
    timestamp: int = 0
    extra: None = None
    section: str | None = None
    title: str | None = None


def rows_of(source: str, rng: random.Random, n: int) -> list[R]:
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        if rng.random() < 0.2:
            text += " replacement pump" * rng.randint(1, 3)  # a phrase held more than once
        out.append(R(f"{source}:{i}", text, source, i, f"h{rng.random()}", section=f"# {rng.choice(WORDS)}"))
    return out


def wait_built(index: KeywordIndex) -> Postings:
    deadline = time.monotonic() + 60
    while index.postings is None:
        assert time.monotonic() < deadline, "the postings were never built"
        time.sleep(0.02)
    return index.postings


def assert_same_ranking(index: KeywordIndex) -> int:
    """rank() and FTS5's search() agree on every query: the same chunks, the same scores (a phrase
    counted at each occurrence, as FTS5 does). Hits compared."""
    compared = 0
    for q in QUERIES:
        kq = parse(q)
        single, phrases = kq.parts()
        fast = index.rank(single, phrases, 100_000)
        assert fast is not None
        slow = index.search(kq.match(), 100_000)
        assert {h.rowid for h in fast} == {h.rowid for h in slow}, q
        by_id = {h.rowid: h.score for h in slow}
        for h in fast:
            assert h.score == pytest.approx(by_id[h.rowid], rel=1e-4, abs=1e-5), q
        compared += len(fast)
    return compared


def test_postings_rank_as_fts5_does_through_replace_remove_rename_and_folds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postings_mod, "FOLD_MIN", 200)  # fold often, so folds are exercised
    rng = random.Random(7)
    sources = {f"docs/{i}.md": rows_of(f"docs/{i}.md", rng, rng.randint(1, 12)) for i in range(60)}
    index = KeywordIndex.open(tmp_path / "s.json.kw", sources, {})
    try:
        wait_built(index)
        assert assert_same_ranking(index) > 100
        for step in range(120):
            name = f"docs/{rng.randrange(80)}.md"
            action = rng.random()
            if action < 0.6:
                index.replace(name, rows_of(name, rng, rng.randint(0, 10)), None)
            elif action < 0.8:
                index.remove(name)
            else:
                new = f"moved/{step}.md"
                index.rename(
                    name, new, [R(r.id, r.content, new, r.chunk, r.hash) for r in rows_of(new, rng, 3)], None
                )
        assert assert_same_ranking(index) > 100
    finally:
        index.close()


def test_changes_made_while_the_postings_are_built_are_not_lost(tmp_path: Path) -> None:
    rng = random.Random(11)
    sources = {f"a/{i}.txt": rows_of(f"a/{i}.txt", rng, 20) for i in range(300)}
    path = tmp_path / "s.json.kw"
    KeywordIndex.open(path, sources, {}).close()
    index = KeywordIndex.open(path, sources, {})  # the build starts in its thread at once
    try:
        changes = during = 0

        def change() -> None:
            nonlocal changes, during
            while (index.postings is None or changes < 40) and changes < 3000:
                name = f"a/{rng.randrange(320)}.txt"
                if rng.random() < 0.7:
                    index.replace(name, rows_of(name, rng, 5), None)
                else:
                    index.remove(name)
                changes += 1
                during += index.postings is None

        t = threading.Thread(target=change)
        t.start()
        t.join(120)
        assert not t.is_alive()
        wait_built(index)
        assert during > 0, "no change came while the postings were built"
        assert assert_same_ranking(index) > 100
    finally:
        index.close()


def test_a_query_of_common_words_only_and_an_empty_store(tmp_path: Path) -> None:
    index = KeywordIndex.open(tmp_path / "s.json.kw", {}, {})
    try:
        built = wait_built(index)
        assert built.count == 0
        assert index.rank(["pump"], [], 10) == []
        index.replace("x.md", [R("x:0", "the of and pump", "x.md", 0, "h")], None)
        hits = index.rank(*parse("the of").parts(), 10)
        assert hits is not None and [h.source for h in hits] == ["x.md"]
    finally:
        index.close()
