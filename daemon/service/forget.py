"""Forgetting a folder's entries on purpose (``embedd forget``), with or without the daemon.

An unreachable folder keeps its entries (``daemon.service.folders``); a user who really
dropped a disk, or emptied a folder while the daemon was stopped, says so here. The running
daemon does it on its worker thread, the store's only writer (``POST /v1/forget`` on its Unix
socket queues a job); without a daemon the store is opened with its lock, changed and saved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path

from daemon.config import Config, WatchConfig
from daemon.errors import SchedulerClosedError, StoreError, UsageError
from daemon.watch import scan


def matching(sources: Iterable[str], prefix: str) -> list[str]:
    """The sources equal to ``prefix`` or below it as a folder (``inbox/old`` takes
    ``inbox/old/a.txt``, never ``inbox/older.txt``), sorted."""
    folder = prefix.rstrip("/") + "/"
    return sorted(s for s in sources if s == prefix or s.startswith(folder))


def unwatched(watches: Sequence[WatchConfig], sources: Iterable[str]) -> list[str]:
    """The sources no configured watch names any more (a folder dropped before a restart), sorted."""
    return sorted(s for s in sources if scan.path_of(watches, s) is None)


def source_prefix(config: Config, target: str) -> str:
    """The source prefix ``target`` names: a path under a watched folder, or a source prefix.

    A path (absolute, or relative to the current folder) under a watch becomes that watch's
    name and the path below it; anything else is taken as a source prefix as it stands.
    Raises UsageError for an empty target.
    """
    if not target.strip("/ "):
        raise UsageError("give a folder, a file or a source prefix to forget (not an empty one)")
    path = Path(target).absolute()
    for watch in config.watches:
        if path == watch.path:
            return watch.name
        if watch.path in path.parents:
            return f"{watch.name}/{path.relative_to(watch.path).as_posix()}"
    return target.rstrip("/")


def forget_offline(config: Config, prefix: str) -> list[str]:
    """Forget ``prefix`` in the store itself, holding its lock (no daemon runs); returns the sources.

    The sinks' queues are marked, so the daemon removes the rows from each sink at its next
    start. Raises StoreLockedError while a daemon holds the store, StoreError without a store.
    """
    from daemon.sinks.queue import SinkQueue, queue_path
    from daemon.store.format import parse_header_line
    from daemon.store.store import Store

    path = config.store.path
    try:
        with open(path, "rb") as f:
            header = parse_header_line(f.readline())
    except FileNotFoundError:
        raise StoreError(f"no store at {path}: the daemon has not written one yet") from None
    except OSError as exc:
        raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
    if header is None or header.fingerprint is None:
        raise StoreError(f"{path} was not written by embedd's daemon; start the daemon once so it adopts it")
    with Store.open(
        path, model=header.model, dimensions=header.dimensions, fingerprint=header.fingerprint
    ) as store:
        gone = matching(store.sources(), prefix)
        if not gone:
            return gone
        for sink in config.sinks:
            queue = SinkQueue.open(queue_path(path, sink.name), sink=sink.name)
            try:
                queue.mark(gone)
            finally:
                queue.close()
        for source in gone:
            store.remove_source(source)
        store.save()
    return gone


def sources_named(config: Config, sources: Iterable[str]) -> list[str]:
    """The files ``sources`` stand for, for the confirmation (the source itself when no watch names it)."""
    return [str(scan.path_of(config.watches, s) or s) for s in sources]


class ForgetJobs:
    """Forget requests from the API's thread, run by the worker between two files."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._jobs: list[tuple[str, Future[list[str]]]] = []
        self._closed = False

    def submit(self, prefix: str) -> Future[list[str]]:
        """Queue ``prefix``; the future gives the sources removed (SchedulerClosedError: stopping)."""
        future: Future[list[str]] = Future()
        with self._lock:
            if self._closed:
                raise SchedulerClosedError("the daemon is stopping")
            self._jobs.append((prefix, future))
        self._wake()
        return future

    def pending(self) -> bool:
        """True when a request waits."""
        with self._lock:
            return bool(self._jobs)

    def run(self, forget: Callable[[str], list[str]]) -> None:
        """Run every waiting request with ``forget`` (on the worker thread, under the store lock)."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for prefix, future in jobs:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(forget(prefix))
            except Exception as exc:  # the caller hears it; the worker goes on
                future.set_exception(exc)

    def close(self) -> None:
        """The worker stops: refuse new requests and fail the waiting ones."""
        with self._lock:
            self._closed = True
            jobs, self._jobs = self._jobs, []
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(SchedulerClosedError("the daemon is stopping"))
