"""Bringing a sink in line with the store: the queue-driven syncer and the full sync.

``SinkSyncer.step`` takes a few dirty sources from the sink's queue, reads their current
rows from the store through ``entries_for`` and writes them to the sink. A sink that is down
or refuses is logged (``sink_error``) and retried with backoff; nothing raises into the
caller and nothing is dropped from the queue until the sink has it. ``full_sync`` makes a
sink's rows of this daemon equal the store's, row for row (``embedd sink sync``, and the
first load of a sink added to a daemon that already has a store).

``entries_for`` and ``all_sources`` read the store: when the syncer runs in its own thread,
they must take whatever lock guards the store and copy the vectors they return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from daemon.errors import SinkError
from daemon.loops import Backoff, StopFlag
from daemon.sinks.base import RowDigest, Sink, SinkRow
from daemon.sinks.queue import QueueLag, SinkQueue

__all__ = ["EntriesFor", "FullSyncReport", "SinkStatus", "SinkSyncer", "full_sync"]

log = structlog.get_logger(__name__)

EntriesFor = Callable[[str], Sequence[SinkRow] | None]
"""A source's rows as the store holds them now; None when the store no longer has the source."""

STEP_SOURCES = 64
PROBE_IDLE_S = 15.0
FULL_SYNC_ROWS = 2000  # rows read from the store and written per round of a full sync


class _Never:
    def is_set(self) -> bool:
        return False


@dataclass(frozen=True)
class FullSyncReport:
    """What ``full_sync`` did."""

    sources: int  # the store's sources
    rows: int  # rows written
    unchanged: int  # rows the sink already had as the store has them
    deleted: int  # rows removed because the store no longer has them
    seconds: float
    complete: bool  # False when stopped before the end
    flush_seconds: float = 0.0  # of ``seconds``: sealing what was written (Milvus Lite indexes it then)


@dataclass(frozen=True)
class SinkStatus:
    """A syncer's state for logs and ``embedd status`` in the running daemon."""

    sink: str
    lag: QueueLag
    failures: int  # consecutive failed attempts
    retry_in_s: float  # until the next attempt


def full_sync(
    sink: Sink,
    all_sources: Iterable[str],
    entries_for: EntriesFor,
    *,
    rewrite: bool = False,
    stop: StopFlag | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FullSyncReport:
    """Make the sink's rows of this daemon equal the store's; idempotent.

    Reads what the sink holds (keys, hashes, pages, timestamps; no vectors), writes every
    store row it lacks or holds otherwise (all of them with ``rewrite``), in large batches,
    then deletes by key the rows of this daemon the store does not hold: files it no longer
    has, chunk positions past a file's end. Other daemons' rows stay. Raises SinkError;
    after a failure or a ``stop`` the sink holds a mix, and running again fixes it.
    ``progress(done, total)`` is called with the sources handled so far.
    """
    stop = stop or _Never()
    start = time.monotonic()
    sources = sorted(set(all_sources))
    sink.connect()
    present = sink.digests()
    expected: set[str] = set()
    written = unchanged = done = 0
    group: list[SinkRow] = []
    for source in sources:
        if stop.is_set():
            break
        for row in entries_for(source) or ():
            key = sink.row_id(source, row.chunk)
            expected.add(key)
            if not rewrite and present.get(key) == RowDigest(row.hash, row.page, row.timestamp):
                unchanged += 1
            else:
                group.append(row)
        done += 1
        if len(group) >= FULL_SYNC_ROWS:
            written += sink.upsert(group)
            group = []
            if progress is not None:
                progress(done, len(sources))
    complete = not stop.is_set()
    deleted = 0
    flush_s = 0.0
    if complete:
        written += sink.upsert(group)
        deleted = sink.delete_ids(present.keys() - expected)
        if written or deleted:
            flushed = time.monotonic()
            sink.flush()
            flush_s = time.monotonic() - flushed
        if progress is not None:
            progress(done, len(sources))
    elapsed = time.monotonic() - start
    return FullSyncReport(len(sources), written, unchanged, deleted, elapsed, complete, flush_s)


class SinkSyncer:
    """Keeps one sink in line with the store by draining its queue; ``step`` never raises.

    Call ``step`` from one thread (``run`` is a loop of them); ``SinkQueue.mark`` may be
    called from any other.
    """

    def __init__(
        self,
        sink: Sink,
        queue: SinkQueue,
        entries_for: EntriesFor,
        all_sources: Callable[[], Iterable[str]],
        *,
        batch: int = STEP_SOURCES,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        release_idle_s: float | None = 5.0,
        probe_idle_s: float | None = PROBE_IDLE_S,
    ) -> None:
        """``release_idle_s``: close a local sink (a file one process can open) after this long
        without work, freeing it for other processes (None: keep it open). ``probe_idle_s``:
        reconnect to a network sink after this long without work, to notice a server that went
        away or a collection made again (None: never)."""
        self.sink = sink
        self.queue = queue
        self._entries_for = entries_for
        self._all_sources = all_sources
        self._batch = batch
        self._clock = clock
        # A server's collection may be shared by several daemons: when it goes down they must not
        # all retry at the same instant. A local file or folder has only this daemon.
        self.backoff = backoff or Backoff(clock, jitter=0.0 if sink.local else 0.5)
        self._release_idle_s = release_idle_s
        self._probe_idle_s = probe_idle_s
        self._last_work = clock()
        self._released = True
        # Sources a step may take. A failed batch of several is halved on each retry, so one
        # source the sink (or the store) keeps refusing is soon alone and goes to the back,
        # instead of failing every batch it is in; a success restores the full batch, so after
        # an outage the queue drains at full speed again from the second step.
        self._limit = batch

    def status(self) -> SinkStatus:
        """The queue's lag and the retry state."""
        return SinkStatus(self.sink.name, self.queue.lag(), self.backoff.failures, self.backoff.wait_s())

    def step(self, stop: StopFlag | None = None) -> int:
        """Write up to ``batch`` dirty sources to the sink; returns how many it now has as the store does.

        Does nothing while backing off. When the queue asks for a full sync (a new sink)
        that runs first, which can take minutes for a big store; ``stop`` ends it early.
        """
        if not self.backoff.ready():
            return 0
        applied: list[str] = []
        taken: list[str] = []
        try:
            if self.queue.full_sync_needed:
                count = self._full(stop or _Never())
            else:
                taken = self.queue.take(self._limit)
                if not taken:
                    probed = self._idle(stop or _Never())
                    if probed is None:
                        return 0
                    count = probed
                else:
                    self._released = False
                    self._last_work = self._clock()
                    self.sink.connect()
                    if self._collection_replaced():
                        taken = []  # the full sync takes them all
                        count = self._full(stop or _Never())
                    else:
                        self.sink.apply({s: self._entries_for(s) for s in taken})
                        applied = taken
                        count = len(applied)
        except SinkError as exc:
            self._failed(exc.reason, taken)
            return 0
        except Exception as exc:
            # A bug here must not kill the sink's thread: say so loudly and keep retrying.
            log.exception("sink_step_failed", sink=self.sink.name)
            self._failed(f"{type(exc).__name__}: {exc}", taken)
            return 0
        finally:
            self.queue.done(applied)
        self._succeeded(count)
        return count

    def run(self, stop: StopFlag, *, poll_s: float = 0.5) -> None:
        """Step until ``stop`` is set, sleeping while idle or backing off; the caller closes the sink."""
        while not stop.is_set():
            if self.step(stop) and self.backoff.ready():
                continue
            self.queue.wait(min(poll_s, self.backoff.wait_s()) if self.backoff.failures else poll_s)

    def full_sync(self, stop: StopFlag | None = None, *, rewrite: bool = False) -> FullSyncReport:
        """``full_sync`` of the whole store, then the queue is cleared of what it covered.

        Raises SinkError (for ``embedd sink sync``, which reports it); a stopped sync leaves
        the queue as it was.
        """
        taken = self.queue.take()
        self.sink.connect()
        self._collection_replaced()
        report = full_sync(self.sink, self._all_sources(), self._entries_for, rewrite=rewrite, stop=stop)
        if report.complete:
            self.queue.done(taken)
            self.queue.set_full_sync_needed(False)
            self.queue.note_error(None)
        return report

    # ----- internals -----

    def _full(self, stop: StopFlag) -> int:
        log.info("sink_full_sync_started", sink=self.sink.name)
        self._released = False
        report = self.full_sync(stop)
        self._last_work = self._clock()
        if report.complete:
            log.info(
                "sink_full_sync_done",
                sink=self.sink.name,
                sources=report.sources,
                rows=report.rows,
                unchanged=report.unchanged,
                deleted=report.deleted,
                seconds=round(report.seconds, 2),
                flush_seconds=round(report.flush_seconds, 2),
            )
        return report.sources if report.complete else 0

    def _idle(self, stop: StopFlag) -> int | None:
        """Between changes: free a local sink, or check that a network sink is still the same one.

        Returns None when nothing was tried, else the sources a full sync brought in line.
        """
        idle = self._clock() - self._last_work
        if self.sink.local:
            if not self._released and self._release_idle_s is not None and idle >= self._release_idle_s:
                self.sink.close()
                self._released = True
            return None
        # After a failure the backoff paces the probes (step only runs when it allows one).
        if self._probe_idle_s is None or (idle < self._probe_idle_s and not self.backoff.failures):
            return None
        self._last_work = self._clock()
        # A reconnect reads the collection afresh: gone (made again, empty) or made again by
        # another daemon, it has another incarnation, and the whole store goes into it.
        self.sink.close()
        self.sink.connect()
        if self._collection_replaced():
            return self._full(stop)
        return 0

    def _collection_replaced(self) -> bool:
        """True (and a full sync recorded as needed) when the sink's collection is not the one
        it last wrote into: dropped and made again (empty), or a new server."""
        current = self.sink.incarnation
        known = self.queue.incarnation
        if current is None or current == known:
            return False
        replaced = known is not None and not self.queue.full_sync_needed
        if replaced:
            log.warning(
                "sink_collection_replaced",
                sink=self.sink.name,
                hint="the collection is not the one written before (dropped, or a new server): "
                "loading the whole store into it",
            )
            self.queue.set_full_sync_needed(True)  # durable before the new incarnation is
        self.queue.set_incarnation(current)
        return replaced

    def _failed(self, reason: str, taken: list[str]) -> None:
        delay = self.backoff.failed()
        if len(taken) > 1:
            # Which of them failed is unknown: retry the first half of them.
            self._limit = max(1, len(taken) // 2)
        else:
            # A source the sink keeps refusing goes to the back, so the others still get through.
            self.queue.defer(taken)
        self.queue.note_error(reason)
        log.warning(
            "sink_error",
            sink=self.sink.name,
            reason=reason,
            pending=self.queue.pending(),
            failures=self.backoff.failures,
            retry_in_s=round(delay, 1),
        )

    def _succeeded(self, applied: int) -> None:
        self._limit = self._batch
        if self.backoff.failures:
            log.info("sink_recovered", sink=self.sink.name, after_failures=self.backoff.failures)
        self.backoff.succeeded()
        self.queue.note_error(None)
        log.debug("sink_synced", sink=self.sink.name, sources=applied, pending=self.queue.pending())
