"""One llama.cpp context shared by queries and indexing: one embedder thread, queries first.

Every native embedding call of the daemon is made by one long-lived thread, the embedder
thread. That is not only about the context not being thread-safe: libgomp keeps a separate
OpenMP worker team for each thread that enters a parallel region, and a thread's niceness
and I/O priority are inherited from the thread that created it, so calls from several
threads would multiply the workers and lose the priorities set for them.

Work arrives as jobs (a list of texts) with a priority: ``QUERY`` (searches and the
embeddings API) before ``INDEX`` (the pipeline's batches). A job is run in slices of at most
``slice_tokens`` tokens (``SLICE_TOKENS``, 256; one text longer than that runs alone): after
each slice the thread picks the most urgent job again, so a query waits at most for the slice
in flight, never for a whole file or a bulk index. At 512 tokens (the context) a slice took
about 210 ms on the 2-vCPU EPYC while bulk-indexing, and searches during a bulk index had a
p95 of 282 ms; halving it halves that wait, and the native batch size moves throughput by
under 10% (``docs/benchmarks.md``). Unfinished jobs go to the back of their priority
class, so one large embeddings request cannot starve a search either. Pending query jobs
are coalesced into one native call while they fit in one batch: eight clients asking for one
short text each cost one call, not eight.

Texts are checked (not empty, not longer than the context) on the caller's thread when the
job is submitted, so a bad request fails at once. Tokenizing reads only the model's
vocabulary, never the context, and runs no OpenMP region, so it is safe on any thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import structlog

from daemon.embed.embedder import Embedder, FloatMatrix
from daemon.errors import BadTextError, EmbedError, SchedulerClosedError, TextTooLongError

log = structlog.get_logger("embedd")

# Most texts in one coalesced call of query jobs (llama.cpp's n_seq_max is far above this).
MAX_TEXTS_PER_CALL = 64
SLICE_TOKENS = 256


class Priority(IntEnum):
    """Lower runs first."""

    QUERY = 0
    INDEX = 1


@dataclass(eq=False)
class _Job:
    priority: Priority
    texts: list[str]
    tokens: list[int]
    future: Future[FloatMatrix]
    submitted: float
    index_slices_at_submit: int
    done: int = 0
    slices: int = 0
    parts: list[FloatMatrix] = field(default_factory=list)
    started: float | None = None
    index_slices_waited: int = 0


@dataclass(frozen=True)
class SchedulerStats:
    """What the embedder thread is doing, for status pages and benchmarks."""

    queued_queries: int
    queued_index: int
    busy: bool
    query_jobs: int  # finished since start
    index_jobs: int
    index_slices: int  # native calls made for indexing since start
    query_calls: int  # native calls made for queries since start

    def to_json(self) -> dict[str, int | bool]:
        return {
            "queued_queries": self.queued_queries,
            "queued_index": self.queued_index,
            "busy": self.busy,
            "query_jobs": self.query_jobs,
            "index_jobs": self.index_jobs,
            "index_slices": self.index_slices,
            "query_calls": self.query_calls,
        }


class Scheduler:
    """Runs every ``embed`` of ``embedder`` on one thread, queries first; start, use, close."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        slice_tokens: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.embedder = embedder
        self._slice_tokens = slice_tokens or min(SLICE_TOKENS, embedder.max_tokens)
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, _Job]] = []
        self._seq = itertools.count()
        self._closing = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._index_slices = 0
        self._query_calls = 0
        self._query_jobs = 0
        self._index_jobs = 0

    # -- the callers' side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the embedder thread (it inherits this thread's priority and niceness)."""
        self._thread = threading.Thread(target=self._run, name="embedd-embedder", daemon=True)
        self._thread.start()

    def submit(
        self, texts: Sequence[str], priority: Priority, tokens: Sequence[int | None] | None = None
    ) -> Future[FloatMatrix]:
        """Queue ``texts``; the future gives their vectors, shape (len(texts), dimension), in order.

        Raises BadTextError for an empty text, TextTooLongError for one longer than the context
        (before anything is queued) and SchedulerClosedError once the daemon is stopping.
        Cancelling the future before the job starts drops it. ``tokens`` are the texts' counts
        where the caller knows them (the chunker's); the others are counted here.
        """
        texts = list(texts)
        known = list(tokens) if tokens is not None else [None] * len(texts)
        if len(known) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(known)} token counts")
        counts: list[int] = []
        for i, (text, count) in enumerate(zip(texts, known, strict=True)):
            if not text.strip():
                raise BadTextError(f"text {i} is empty or whitespace only; it must not be embedded")
            n = count if count is not None else self.embedder.count_tokens(text)
            if n > self.embedder.max_tokens:
                raise TextTooLongError(n, self.embedder.max_tokens, i)
            counts.append(n)
        future: Future[FloatMatrix] = Future()
        if not texts:
            future.set_result(np.zeros((0, self.embedder.dimension), dtype=np.float32))
            return future
        with self._cond:
            if self._closing or self._thread is None:
                raise SchedulerClosedError("the embedder is not running (the daemon is starting or stopping)")
            job = _Job(priority, texts, counts, future, self._clock(), self._index_slices)
            heapq.heappush(self._heap, (priority, next(self._seq), job))
            self._cond.notify()
        return future

    def embed(
        self, texts: Sequence[str], priority: Priority, tokens: Sequence[int | None] | None = None
    ) -> FloatMatrix:
        """``submit`` and wait for the vectors."""
        return self.submit(texts, priority, tokens).result()

    def stats(self) -> SchedulerStats:
        with self._cond:
            queued = [job.priority for _, _, job in self._heap]
            return SchedulerStats(
                queued_queries=queued.count(Priority.QUERY),
                queued_index=queued.count(Priority.INDEX),
                busy=self._busy,
                query_jobs=self._query_jobs,
                index_jobs=self._index_jobs,
                index_slices=self._index_slices,
                query_calls=self._query_calls,
            )

    def close(self, timeout: float = 60.0) -> None:
        """Take no more jobs, let the call in flight finish, fail what is still queued. Idempotent.

        The embedder itself is not closed: its owner frees it once this returned.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("embedder_thread_stuck", seconds=timeout)
            self._thread = None

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the embedder thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closing:
                    self._cond.wait()
                if self._closing:
                    leftover = [job for _, _, job in self._heap]
                    self._heap.clear()
                    break
                call = self._next_call()
                self._busy = bool(call)
            if call:
                self._execute(call)
            with self._cond:
                self._busy = False
        for job in leftover:
            if not job.future.done():
                job.future.set_exception(SchedulerClosedError("the daemon is stopping"))

    def _next_call(self) -> list[tuple[_Job, int, int]]:
        """Pop the work of the next native call: (job, first text, end) parts; under the lock."""
        call: list[tuple[_Job, int, int]] = []
        budget = self._slice_tokens
        texts = 0
        while self._heap:
            priority, _, job = self._heap[0]
            if call and (priority is not Priority.QUERY or call[0][0].priority is not Priority.QUERY):
                break  # index slices run alone; queries coalesce only with queries
            end, cost = job.done, 0
            while (
                end < len(job.texts)
                and texts + (end - job.done) < MAX_TEXTS_PER_CALL
                and (cost + job.tokens[end] <= budget or (not call and end == job.done))
            ):
                cost += job.tokens[end]
                end += 1
            if end == job.done:
                break  # the next text does not fit this call
            if job.started is None:
                if not job.future.set_running_or_notify_cancel():
                    heapq.heappop(self._heap)  # cancelled before it started: the client went away
                    continue
                job.started = self._clock()
                job.index_slices_waited = self._index_slices - job.index_slices_at_submit
            heapq.heappop(self._heap)
            budget -= cost
            texts += end - job.done
            call.append((job, job.done, end))
            if end < len(job.texts):
                break  # requeued after this call (see _execute)
        return call

    def _execute(self, call: list[tuple[_Job, int, int]]) -> None:
        texts = [text for job, a, b in call for text in job.texts[a:b]]
        try:
            vectors = self.embedder.embed(texts)
        except EmbedError as exc:
            if len(call) == 1:
                self._fail(call[0][0], exc)
                return
            # One job's text broke a coalesced call: run each job's part alone.
            for part in call:
                self._execute([part])
            return
        except Exception as exc:
            log.exception("embed_call_failed", texts=len(texts))
            for job, _, _ in call:
                self._fail(job, exc)
            return
        row = 0
        with self._cond:
            if call[0][0].priority is Priority.INDEX:
                self._index_slices += 1
            else:
                self._query_calls += 1
        for job, a, b in call:
            job.parts.append(vectors[row : row + b - a])
            row += b - a
            job.done = b
            job.slices += 1
            if job.done == len(job.texts):
                self._finish(job)
            else:
                # Back of its class, behind whatever arrived meanwhile: one large job cannot
                # hold up the others of its priority.
                with self._cond:
                    heapq.heappush(self._heap, (job.priority, next(self._seq), job))

    def _finish(self, job: _Job) -> None:
        now = self._clock()
        with self._cond:
            if job.priority is Priority.QUERY:
                self._query_jobs += 1
            else:
                self._index_jobs += 1
            queued = [j for _, _, j in self._heap]
        if job.future.done():
            return
        job.future.set_result(job.parts[0] if len(job.parts) == 1 else np.vstack(job.parts))
        started = job.started if job.started is not None else now
        log.debug(
            "embed_job",
            kind=job.priority.name.lower(),
            texts=len(job.texts),
            tokens=sum(job.tokens),
            slices=job.slices,
            queued_ms=round((started - job.submitted) * 1000, 1),
            ran_ms=round((now - started) * 1000, 1),
            index_slices_waited=job.index_slices_waited,
            index_slices_done=self._index_slices,
            index_pending=any(j.priority is Priority.INDEX for j in queued),
        )

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._cond:
            self._heap = [item for item in self._heap if item[2] is not job]
            heapq.heapify(self._heap)
        if not job.future.done():
            job.future.set_exception(exc)


class QueuedEmbedder:
    """The ``Embedder`` the indexing pipeline is given: each ``embed`` is a job on the scheduler."""

    def __init__(self, scheduler: Scheduler, priority: Priority = Priority.INDEX) -> None:
        self._scheduler = scheduler
        self._inner = scheduler.embedder
        self._priority = priority

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def fingerprint(self) -> str:
        return self._inner.fingerprint

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def pooling(self) -> str:
        return self._inner.pooling

    @property
    def max_tokens(self) -> int:
        return self._inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)

    def embed(self, texts: Sequence[str], *, tokens: Sequence[int | None] | None = None) -> FloatMatrix:
        return self._scheduler.embed(texts, self._priority, tokens)
