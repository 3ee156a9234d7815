"""The scheduler that shares one embedder between queries and indexing (unit tests with a fake)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from fakes import FakeEmbedder

from daemon.embed.embedder import FloatMatrix
from daemon.embed.scheduler import Priority, QueuedEmbedder, Scheduler
from daemon.errors import EmbedError, SchedulerClosedError, TextTooLongError

WAIT = 60.0


class GatedEmbedder(FakeEmbedder):
    """A fake whose calls wait for ``gate`` and report which thread made them."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.threads: set[int] = set()

    def embed(self, texts: Sequence[str], *, tokens: Sequence[int | None] | None = None) -> FloatMatrix:
        self.threads.add(threading.get_ident())
        self.entered.release()
        assert self.gate.wait(WAIT)
        return super().embed(texts, tokens=tokens)


@pytest.fixture
def gated() -> Iterator[tuple[GatedEmbedder, Scheduler]]:
    # 10 tokens per batch; "word word word" costs 3 + 2 = 5 tokens, so two texts per index slice.
    embedder = GatedEmbedder(max_tokens=10)
    scheduler = Scheduler(embedder)
    scheduler.start()
    yield embedder, scheduler
    embedder.gate.set()
    scheduler.close()


def texts(tag: str, n: int) -> list[str]:
    return [f"{tag} {i} x" for i in range(n)]


def test_a_query_waits_only_for_the_slice_in_flight(gated: tuple[GatedEmbedder, Scheduler]) -> None:
    embedder, scheduler = gated
    index = scheduler.submit(texts("doc", 8), Priority.INDEX)  # four slices of two texts
    assert embedder.entered.acquire(timeout=WAIT)  # the first slice is in flight
    query = scheduler.submit(["what q"], Priority.QUERY)
    embedder.gate.set()
    vectors = index.result(WAIT)
    assert query.result(WAIT).shape == (1, 8)
    assert len(embedder.threads) == 1 and threading.get_ident() not in embedder.threads
    assert [len(c) for c in embedder.calls] == [2, 1, 2, 2, 2]
    assert embedder.calls[1] == ["what q"]
    assert np.array_equal(vectors, np.vstack([FakeEmbedder().expected(t) for t in texts("doc", 8)]))


def test_pending_queries_are_coalesced_into_one_call(gated: tuple[GatedEmbedder, Scheduler]) -> None:
    embedder, scheduler = gated
    index = scheduler.submit(texts("doc", 2), Priority.INDEX)
    assert embedder.entered.acquire(timeout=WAIT)
    queries = [scheduler.submit([f"q{i}"], Priority.QUERY) for i in range(4)]  # 3 tokens each
    embedder.gate.set()
    index.result(WAIT)
    got = [q.result(WAIT)[0] for q in queries]
    # 10 tokens per call: three queries fit the first call, the fourth the next.
    assert embedder.calls[1:] == [["q0", "q1", "q2"], ["q3"]]
    for i, vec in enumerate(got):
        assert np.array_equal(vec, embedder.expected(f"q{i}"))
    stats = scheduler.stats()
    assert (stats.query_jobs, stats.index_jobs, stats.index_slices, stats.query_calls) == (4, 1, 1, 2)


def test_a_large_query_job_does_not_hold_up_a_later_one(gated: tuple[GatedEmbedder, Scheduler]) -> None:
    embedder, scheduler = gated
    first = scheduler.submit(texts("big", 6), Priority.QUERY)
    assert embedder.entered.acquire(timeout=WAIT)
    second = scheduler.submit(["small"], Priority.QUERY)
    embedder.gate.set()
    first.result(WAIT)
    second.result(WAIT)
    assert embedder.calls[:2] == [texts("big", 6)[:2], ["small", *texts("big", 6)[2:3]]]


def test_bad_texts_fail_at_submit_and_a_poisoned_job_fails_alone() -> None:
    embedder = FakeEmbedder(max_tokens=10, poison="POISON")
    with Scheduler(embedder) as scheduler:
        with pytest.raises(EmbedError, match="empty"):
            scheduler.submit(["fine", "  "], Priority.QUERY)
        with pytest.raises(TextTooLongError):
            scheduler.submit(["one two three four five six seven eight nine"], Priority.QUERY)
        assert scheduler.embed([], Priority.QUERY).shape == (0, 8)
        gate = threading.Event()
        blocker = FakeEmbedder.embed

        def slow(self: FakeEmbedder, batch: Sequence[str]) -> FloatMatrix:
            gate.wait(WAIT)
            return blocker(self, batch)

        embedder.embed = slow.__get__(embedder)  # type: ignore[method-assign]
        held = scheduler.submit(["hold"], Priority.INDEX)
        good = scheduler.submit(["good"], Priority.QUERY)
        bad = scheduler.submit(["POISON"], Priority.QUERY)
        gate.set()
        held.result(WAIT)
        assert good.result(WAIT).shape == (1, 8)
        with pytest.raises(EmbedError, match="POISON"):
            bad.result(WAIT)


def test_a_cancelled_job_is_never_embedded(gated: tuple[GatedEmbedder, Scheduler]) -> None:
    embedder, scheduler = gated
    held = scheduler.submit(["hold"], Priority.INDEX)
    assert embedder.entered.acquire(timeout=WAIT)
    gone = scheduler.submit(["client went away"], Priority.QUERY)
    assert gone.cancel()
    kept = scheduler.submit(["kept"], Priority.QUERY)
    embedder.gate.set()
    held.result(WAIT)
    kept.result(WAIT)
    assert ["client went away"] not in embedder.calls


def test_close_fails_what_is_queued_and_refuses_new_jobs(gated: tuple[GatedEmbedder, Scheduler]) -> None:
    embedder, scheduler = gated
    running = scheduler.submit(["run"], Priority.INDEX)
    assert embedder.entered.acquire(timeout=WAIT)
    queued = scheduler.submit(["wait"], Priority.QUERY)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    # Release the call in flight only once close() has begun: otherwise the embedder thread
    # may take the queued job first on a loaded machine.
    deadline = time.monotonic() + WAIT
    while not scheduler._closing and time.monotonic() < deadline:
        time.sleep(0.001)
    embedder.gate.set()
    closer.join(WAIT)
    assert running.result(WAIT).shape == (1, 8)  # the call in flight finishes
    with pytest.raises(SchedulerClosedError):
        queued.result(WAIT)
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(["late"], Priority.QUERY)


def test_queued_embedder_is_an_embedder_at_index_priority() -> None:
    embedder = FakeEmbedder()
    with Scheduler(embedder) as scheduler:
        queued = QueuedEmbedder(scheduler)
        assert (queued.dimension, queued.name, queued.max_tokens) == (8, "fake-model", 512)
        assert np.array_equal(queued.embed(["a b"]), embedder.expected("a b")[None, :])
        assert scheduler.stats().index_jobs == 1
