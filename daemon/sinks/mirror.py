"""Mirroring the store into vector-database sinks, one background thread per sink.

The JSON store stays the source of truth. The worker marks every source it changes; each
sink's thread reads the source's current entries from the store (under the store lock) and
writes them, so a slow or absent sink delays only its own copy, never indexing. Marks are
durable (``SinkQueue``), so a restart loses nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import structlog

from daemon.config import Config, SinkConfig
from daemon.errors import SinkError, SinkMismatchError, StoreError, StoreLockedError, UsageError
from daemon.query.hit import Hit
from daemon.sinks.base import Sink, SinkRow, fingerprint_digest
from daemon.sinks.queue import QueueLag, SinkQueue, queue_path
from daemon.sinks.registry import check_sinks
from daemon.sinks.registry import open_sink as open_engine
from daemon.sinks.sync import FullSyncReport, SinkStatus, SinkSyncer, full_sync
from daemon.store.io import StoreLock
from daemon.store.store import Store, lock_path

log = structlog.get_logger("embedd")


def rows_for(store: Store, source: str) -> list[SinkRow] | None:
    """A source's entries as sink rows (vectors copied); None when the store no longer has it."""
    if store.file_state(source) is None:
        return None
    return [
        SinkRow(e.vector.copy(), e.content, e.source, e.page, e.chunk, e.timestamp, e.hash)
        for e in store.source_entries(source)
    ]


def open_sink(cfg: SinkConfig, *, daemon: str, store: Store) -> Sink:
    """A sink for ``cfg`` matching ``store``'s dimensions and fingerprint (not yet connected),
    of the engine its ``type`` names."""
    fingerprint = store.fingerprint
    return open_engine(
        cfg,
        daemon=daemon,
        dimensions=store.dimensions,
        fingerprint=fingerprint_digest(fingerprint.to_json() if fingerprint is not None else {}),
    )


@dataclass
class _Mirrored:
    sink: Sink
    queue: SinkQueue
    syncer: SinkSyncer
    thread: threading.Thread | None = None


class Mirror:
    """Every configured sink of one daemon; ``mark`` is cheap and safe from the worker thread."""

    def __init__(
        self, sinks: Sequence[SinkConfig], *, daemon: str, store: Store, store_lock: threading.RLock
    ) -> None:
        self._store = store
        self._lock = store_lock
        self._stop = threading.Event()
        self._items: list[_Mirrored] = []
        check_sinks(sinks)
        for cfg in sinks:
            sink = open_sink(cfg, daemon=daemon, store=store)
            queue = SinkQueue.open(queue_path(store.path, cfg.name), sink=cfg.name)
            self._items.append(
                _Mirrored(sink, queue, SinkSyncer(sink, queue, self._entries_for, self._sources))
            )

    def _entries_for(self, source: str) -> list[SinkRow] | None:
        with self._lock:
            return rows_for(self._store, source)

    def _sources(self) -> set[str]:
        with self._lock:
            return set(self._store.sources())

    def start(self) -> None:
        """Connect each sink and start its thread.

        A collection built for another model or dimension is a configuration error and is
        raised; a sink that is merely unreachable is logged and retried in the background.
        """
        for item in self._items:
            try:
                item.sink.connect()
            except SinkMismatchError:
                raise
            except SinkError as exc:
                log.warning(
                    "sink_unavailable",
                    sink=item.sink.name,
                    reason=str(exc),
                    hint="changes queue on disk and are retried with backoff",
                )
            item.thread = threading.Thread(
                target=item.syncer.run, args=(self._stop,), name=f"embedd-sink-{item.sink.name}", daemon=True
            )
            item.thread.start()

    def mark(self, sources: Iterable[str]) -> None:
        """Record that these sources changed in the store (durably, before the store is saved)."""
        names = list(sources)
        if names:
            for item in self._items:
                item.queue.mark(names)

    def status(self) -> list[SinkStatus]:
        return [item.syncer.status() for item in self._items]

    def stop(self) -> None:
        """Stop the threads and close sinks and queues; what is still queued is sent next time."""
        self._stop.set()
        for item in self._items:
            # A thread waiting on its queue wakes within the syncer's poll interval.
            if item.thread is not None:
                item.thread.join(timeout=30)
            item.sink.close()
            item.queue.close()

    def __bool__(self) -> bool:
        return bool(self._items)


def _sink_config(config: Config, name: str | None) -> SinkConfig:
    if not config.sinks:
        raise UsageError("the configuration has no [[sink]] table")
    if name is None:
        if len(config.sinks) > 1:
            names = ", ".join(s.name for s in config.sinks)
            raise UsageError(f"the configuration has several sinks ({names}): choose one with --sink")
        return config.sinks[0]
    for sink in config.sinks:
        if sink.name == name:
            return sink
    raise UsageError(f"no [[sink]] named {name!r}; configured: {', '.join(s.name for s in config.sinks)}")


def checked_sink(config: Config, name: str | None) -> SinkConfig:
    """The ``[[sink]]`` named ``name`` (or the only one), once every sink's engine can start here.

    Raises UsageError for a name that is not configured, ConfigError for an engine that cannot
    start (see ``check_sinks``).
    """
    cfg = _sink_config(config, name)
    check_sinks(config.sinks)
    return cfg


def sync_sink(
    config: Config, name: str | None = None, *, rewrite: bool = False
) -> tuple[str, FullSyncReport]:
    """Make a sink hold exactly what the store holds for this daemon (``embedd sink sync``); idempotent.

    Holds the store's lock meanwhile: a running daemon mirrors from memory, ahead of the file
    this would read, and a sync from the file could roll its rows back. Raises
    StoreLockedError (naming what to do) while the daemon runs.
    """
    cfg = checked_sink(config, name)
    try:
        lock = StoreLock.acquire(lock_path(config.store.path))
    except StoreLockedError as exc:
        raise StoreLockedError(
            f"{exc}. The running daemon keeps sink {cfg.name!r} in step itself and reloads the "
            "whole store into a collection that was dropped or replaced; restarting it "
            "(systemctl restart embedd) resumes what its queue still holds"
        ) from None
    except OSError as exc:
        lock_file = lock_path(config.store.path)
        raise StoreError(f"cannot take the lock {lock_file}: {exc.strerror or exc}") from exc
    try:
        with Store.open_readonly(config.store.path) as store:
            sink = open_sink(cfg, daemon=config.daemon.name, store=store)
            try:
                sink.connect()
                report = full_sync(sink, store.sources(), lambda s: rows_for(store, s), rewrite=rewrite)
            finally:
                sink.close()
    finally:
        lock.release()
    return cfg.name, report


def search_sink(
    config: Config, name: str | None, vector: npt.NDArray[np.float32], k: int, *, source_prefix: str | None
) -> list[Hit]:
    """The ``k`` rows of a sink (every daemon's) closest to ``vector``, optionally under a source prefix."""
    cfg = checked_sink(config, name)
    with Store.open_readonly(config.store.path) as store:
        sink = open_sink(cfg, daemon=config.daemon.name, store=store)
    try:
        sink.connect()
        return sink.search(vector, k, source_prefix=source_prefix)
    finally:
        sink.close()


def sink_lags(config: Config) -> list[tuple[str, QueueLag | None]]:
    """What each sink's durable queue still has to send (read-only; None: no queue file yet)."""
    return [(s.name, SinkQueue.read_lag(queue_path(config.store.path, s.name))) for s in config.sinks]
