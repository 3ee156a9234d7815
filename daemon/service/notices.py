"""What the worker tells the rest of the daemon as it works: each fact stated once, for code.

The log says what happened for people; a notice says the same for the parts of the daemon that
follow the work (the events feed, the metrics, the per-file state), so none of them parses log
lines and the worker states every fact in one place. A listener runs on the worker's thread,
inside the change it reports: it must be quick and must not touch the store. One that raises
is logged and dropped from that notice only; it never stops the worker.

Kinds and their fields (all sources are store source names):

- ``file_indexed``: source, chunks, embedded, reused, tokens, seconds
- ``file_removed``: source, reason
- ``file_renamed``: source, to
- ``file_skipped``: source, reason (not indexed; what was stored for it stays)
- ``file_failed``: source, reason, error (an unexpected exception while handling it, logged
  with its traceback; what was stored for it stays, it is tried again when it changes)
- ``folder_unavailable``: watch, path, reason, since (ISO 8601 UTC): a watched folder or one
  below it cannot be reached (missing, unreadable, an empty mount point); its entries stay
- ``folder_back``: watch, path (reachable again; the normal reconcile follows)
- ``store_saved``: entries, written, reused, bytes_written, durable_s
- ``store_save_failed``: reason, retry_in_s (a failed fold too: it is retried)
- ``store_folded``: entries, bytes_written, durable_s, seconds (a large store's journal folded
  into its JSON file)
- ``bulk_queued``: files (more files queued by a scan), total, left
- ``bulk_progress``: done, total, left
- ``bulk_done``: total
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import structlog

log = structlog.get_logger("embedd")


class Listener(Protocol):
    """Called with a notice's kind and fields."""

    def __call__(self, kind: str, fields: Mapping[str, object]) -> None: ...


class Notices:
    """The worker's notices, fanned out to every listener in the order they were added."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` for every notice from now on (safe from any thread)."""
        self._listeners = (*self._listeners, listener)

    def notify(self, kind: str, **fields: object) -> None:
        """Tell every listener; a listener's failure is logged and the others still hear it."""
        for listener in self._listeners:
            try:
                listener(kind, fields)
            except Exception:
                log.exception("notice_listener_failed", kind=kind, listener=repr(listener))
