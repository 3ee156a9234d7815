"""Coalesced, retried saves of the store: a burst of changes becomes few durable writes.

The worker marks the store dirty after each change; ``maybe_save`` writes once the burst is
over (nothing left to index), or when the store has been dirty for ``MAX_DIRTY_S`` anyway. A
failed write (disk full, read-only, I/O error) keeps the changes in memory and is retried
after a growing delay; the previous file stays intact meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from daemon.errors import StoreError
from daemon.loops import Backoff
from daemon.service.notices import Notices
from daemon.store.store import Store

log = structlog.get_logger("embedd")

# How long a burst of changes may keep the store dirty before it is written anyway.
MAX_DIRTY_S = 10.0
SAVE_RETRY_S = (1.0, 5.0, 30.0, 60.0)


class Saver:
    """Decides when the store is written; one thread (the worker) uses it, under the store lock."""

    def __init__(self, store: Store, clock: Callable[[], float], notices: Notices | None = None) -> None:
        self._store = store
        self._clock = clock
        self._notices = notices or Notices()
        self._dirty_since: float | None = None
        # A local disk: no jitter (nobody else retries against it), a short fixed ladder.
        self._retry = Backoff(clock, steps=SAVE_RETRY_S)

    def mark_dirty(self) -> None:
        """The store changed: a save is due once the burst is over."""
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    @property
    def pending(self) -> bool:
        """True while a change waits to be written."""
        return self._dirty_since is not None

    def next_deadline(self) -> float | None:
        """When the worker should wake to save (None when nothing waits)."""
        if self._dirty_since is None:
            return None
        return self._clock() + max(self._retry.wait_s(), 0.05)

    def maybe_save(self, *, quiet: bool, force: bool = False) -> bool:
        """Write the store when ``quiet`` (no work left), ``force``, or dirty for too long.

        Returns True when a save happened. A failure is logged and retried later; it never raises.
        """
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
            log.error(
                "store_save_failed",
                path=str(self._store.path),
                reason=str(exc),
                retry_in_s=delay,
                hint="the previous store file is intact; changes are kept in memory",
            )
            self._notices.notify("store_save_failed", reason=str(exc), retry_in_s=delay)
            return False
        self._retry.succeeded()
        self._dirty_since = None
        log.info(
            "store_saved",
            path=str(self._store.path),
            entries=stats.entries,
            written=stats.entries_written,
            reused=stats.entries_reused,
            mib_written=round(stats.bytes_written / 2**20, 2),
            mib_reused=round(stats.bytes_reused / 2**20, 2),
            durable_s=round(stats.durable_seconds, 3),
        )
        self._notices.notify(
            "store_saved",
            entries=stats.entries,
            written=stats.entries_written,
            reused=stats.entries_reused,
            bytes_written=stats.bytes_written,
            durable_s=stats.durable_seconds,
        )
        return True
