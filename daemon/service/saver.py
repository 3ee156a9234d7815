"""Coalesced, retried saves of the store, and folds of its journal into the JSON file.

The worker marks the store dirty after each change; ``maybe_save`` makes the changes durable
once the burst is over (nothing left to index), or when the store has been dirty for
``MAX_DIRTY_S`` anyway: a large store appends them to its journal (O(change)), a small one
rewrites its JSON file as before. A failed write (disk full, read-only, I/O error) keeps the
changes in memory and is retried after a growing delay; what was durable stays intact.

A large store's JSON file catches up with its journal in a fold: when the journal has grown
past ``FOLD_FRACTION`` of the JSON file, when its oldest change is ``FOLD_AFTER_S`` old, and
always at a clean stop. The fold writes on its own thread at idle I/O priority without the
store lock (``daemon.store.fold``), so searches and indexing go on meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from daemon.errors import StoreError
from daemon.loops import Backoff
from daemon.service.notices import Notices
from daemon.service.priority import lower_priority
from daemon.store.entries import SaveStats
from daemon.store.fold import FoldPlan, write_fold
from daemon.store.store import Store

log = structlog.get_logger("embedd")

# How long a burst of changes may keep the store dirty before it is written anyway.
MAX_DIRTY_S = 10.0
SAVE_RETRY_S = (1.0, 5.0, 30.0, 60.0)
# A fold is due once the journal holds this fraction of the JSON file's size (it is then
# replayed at each start: a fraction bounds that time) ...
FOLD_FRACTION = 0.125
# ... or once its oldest change has waited this long (how stale the JSON file gets at most).
FOLD_AFTER_S = 600.0


class _FoldThread(threading.Thread):
    """Writes one fold plan at idle I/O priority; the worker adopts the result."""

    def __init__(self, plan: FoldPlan) -> None:
        super().__init__(name="embedd-fold", daemon=True)
        self.plan = plan
        self.error: StoreError | None = None

    def run(self) -> None:
        # A courtesy: the fold is the one big writer; interactive work and the journal come first
        # (nice 19, batch scheduling, idle I/O; what the kernel refuses is left as it is).
        lower_priority(19, all_threads=False)
        try:
            write_fold(self.plan)
        except StoreError as exc:
            self.error = exc


class Saver:
    """Decides when the store is written; one thread (the worker) uses it, under the store lock."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        notices: Notices | None = None,
        *,
        background: bool = True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._notices = notices or Notices()
        self._dirty_since: float | None = None
        # A local disk: no jitter (nobody else retries against it), a short fixed ladder.
        self._retry = Backoff(clock, steps=SAVE_RETRY_S)
        self._fold_retry = Backoff(clock, steps=SAVE_RETRY_S)
        self._background = background
        self._unfolded_since: float | None = clock() if store.unfolded else None
        self._fold: _FoldThread | None = None

    def mark_dirty(self) -> None:
        """The store changed: a save is due once the burst is over."""
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    @property
    def pending(self) -> bool:
        """True while a change waits to be written."""
        return self._dirty_since is not None

    @property
    def folding(self) -> bool:
        """True while a fold is being written on its thread."""
        return self._fold is not None

    def next_deadline(self) -> float | None:
        """When the worker should wake to save or adopt a fold (None when nothing waits)."""
        deadlines = []
        if self._dirty_since is not None:
            deadlines.append(self._clock() + max(self._retry.wait_s(), 0.05))
        if self._fold is not None:
            deadlines.append(self._clock() + 0.25)
        elif self._unfolded_since is not None:
            deadlines.append(
                max(self._unfolded_since + FOLD_AFTER_S, self._clock() + self._fold_retry.wait_s())
            )
        return min(deadlines) if deadlines else None

    def maybe_save(self, *, quiet: bool, force: bool = False) -> bool:
        """Write the store when ``quiet`` (no work left), ``force``, or dirty for too long; fold when due.

        ``force`` is the clean stop: everything is made durable and folded into the JSON file
        (waiting for a fold in progress). Returns True when a save happened. A failure is
        logged and retried later; it never raises.
        """
        self._adopt_fold(wait=force)
        saved = self._save(quiet=quiet, force=force)
        if self._store.unfolded:
            if self._unfolded_since is None:
                self._unfolded_since = self._clock()
        elif self._fold is None:
            self._unfolded_since = None
        if force:
            if self._store.unfolded and not self._store.dirty:
                self._fold_now()
        elif self._fold_due():
            self._start_fold()
        return saved

    def _save(self, *, quiet: bool, force: bool) -> bool:
        if self._dirty_since is None or not self._store.dirty:
            self._dirty_since = None
            return False
        now = self._clock()
        if not force and not self._retry.ready():
            return False
        if not (force or quiet or now - self._dirty_since >= MAX_DIRTY_S):
            return False
        try:
            stats = self._store.save()
        except StoreError as exc:
            delay = self._retry.failed()
            self._failed("store_save_failed", exc, delay)
            return False
        self._retry.succeeded()
        self._dirty_since = None
        self._saved(stats)
        return True

    def _failed(self, event: str, exc: StoreError, delay: float) -> None:
        log.error(
            event,
            path=str(self._store.path),
            reason=str(exc),
            retry_in_s=delay,
            hint="what was durable is intact; changes are kept (in the journal, or in memory)",
        )
        self._notices.notify("store_save_failed", reason=str(exc), retry_in_s=delay)

    def _saved(self, stats: SaveStats) -> None:
        log.info("store_journalled" if stats.journalled else "store_saved", **self._logged(stats))
        self._notices.notify(
            "store_saved",
            entries=stats.entries,
            written=stats.entries_written,
            reused=stats.entries_reused,
            bytes_written=stats.bytes_written,
            durable_s=stats.durable_seconds,
        )

    def _logged(self, stats: SaveStats) -> dict[str, object]:
        """The fields of a save's or a fold's log line."""
        return {
            "path": str(self._store.path),
            "entries": stats.entries,
            "written": stats.entries_written,
            "reused": stats.entries_reused,
            "mib_written": round(stats.bytes_written / 2**20, 2),
            "mib_reused": round(stats.bytes_reused / 2**20, 2),
            "durable_s": round(stats.durable_seconds, 3),
        }

    # -- folds ---------------------------------------------------------------------------

    def _fold_due(self) -> bool:
        store = self._store
        if self._fold is not None or not store.unfolded or store.dirty or not self._fold_retry.ready():
            return False
        if store.journal_bytes and store.journal_bytes >= FOLD_FRACTION * store.json_bytes:
            return True
        return self._unfolded_since is not None and self._clock() - self._unfolded_since >= FOLD_AFTER_S

    def _start_fold(self) -> None:
        try:
            plan = self._store.begin_fold()
        except (StoreError, OSError) as exc:
            log.error("store_fold_failed", path=str(self._store.path), reason=str(exc))
            self._fold_retry.failed()
            return
        log.info("store_fold_started", path=str(self._store.path), journal_bytes=self._store.journal_bytes)
        if not self._background:
            thread = _FoldThread(plan)
            thread.run()
            self._fold = thread
            self._adopt_fold(wait=True)
            return
        self._fold = _FoldThread(plan)
        self._fold.start()

    def _adopt_fold(self, *, wait: bool) -> None:
        """Adopt a fold its thread finished (or wait for it): the JSON file caught up."""
        thread = self._fold
        if thread is None:
            return
        if thread.is_alive():
            if not wait:
                return
            thread.join()
        self._fold = None
        if thread.error is not None:
            self._store.fold_failed(thread.plan)
            self._failed("store_fold_failed", thread.error, self._fold_retry.failed())
            return
        self._fold_retry.succeeded()
        stats = self._store.finish_fold(thread.plan)
        self._folded(stats)

    def _fold_now(self) -> None:
        try:
            stats = self._store.fold()
        except StoreError as exc:
            self._failed("store_fold_failed", exc, self._fold_retry.failed())
            return
        self._folded(stats)

    def _folded(self, stats: SaveStats) -> None:
        if not self._store.unfolded:
            self._unfolded_since = None
        log.info("store_folded", **self._logged(stats), seconds=round(stats.seconds, 3))
        self._notices.notify(
            "store_folded",
            entries=stats.entries,
            bytes_written=stats.bytes_written,
            durable_s=stats.durable_seconds,
            seconds=stats.seconds,
        )
