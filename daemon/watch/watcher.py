"""Filesystem watching: the only module that imports watchdog.

Turns watchdog's events into :class:`FileEvent` values for a sink callable. The sink runs on
watchdog's threads, so it must be cheap (put into a queue or a ``Debouncer``) and must not
call back into the :class:`Watcher`.

What the events mean to a consumer (``path`` is always under a watched root):

- ``CHANGED(p)``: look at ``p`` now; it was created or written (a missing ``p`` means it
  vanished since).
- ``DELETED(p)``: ``p`` is gone; when ``p`` was a directory, so is everything below it.
- ``MOVED(p, dest)``: whatever is known about ``p`` (and, for a directory, below ``p/``) now
  belongs to ``dest``, replacing what was there; then ``dest`` must be checked like a
  ``CHANGED`` (a source that was never indexed, such as an editor's temp file, makes it
  exactly a ``CHANGED(dest)``).
- ``RESCAN(p)``: events below directory ``p`` may have been lost (queue overflow, a dead
  watch, a directory that appeared with files already in it); reconcile ``p`` with the disk.

A ``CHANGED`` from inotify also says whether a writer may still hold the file open
(``writer_open``): True after a write (IN_MODIFY), False once a writer closed it
(IN_CLOSE_WRITE), None when unknown (creation, attributes, and everything polling reports).

Symlinks are never followed, also not by the polling fallback: a symlinked folder is not
descended into, so a link loop cannot make it walk forever.

No include/exclude filtering happens here; the consumer decides what it indexes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import structlog
from watchdog.events import EventsLostEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from daemon.log import display_path
from daemon.watch.events import EventKind, EventSink, FileEvent

__all__ = ["EventKind", "EventSink", "FileEvent", "Watcher"]

log = structlog.get_logger(__name__)

WatchMode = Literal["native", "polling"]

# watchdog (7.x) handles IN_Q_OVERFLOW itself and only reports it through this logger.
_INOTIFY_SYSCTL_DIR: Final = Path("/proc/sys/fs/inotify")
_JOIN_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class _Scope:
    """The paths one root covers: everything below it, or only its direct children."""

    root: Path
    recursive: bool

    def contains(self, path: Path) -> bool:
        if path == self.root:
            return True
        if self.recursive:
            return path.is_relative_to(self.root)
        return path.parent == self.root


def _as_path(raw: bytes | str) -> Path | None:
    return Path(os.fsdecode(raw)) if raw else None


def _translate(event: FileSystemEvent, scope: _Scope, *, reports_close: bool = False) -> list[FileEvent]:
    """Map one watchdog event to zero or more FileEvents for ``scope``.

    ``reports_close``: the observer reports IN_CLOSE_WRITE (inotify), so a write can be taken
    as "still being written" until the close arrives.
    """
    # watchdog synthesizes events for the contents of a moved or moved-in directory; the
    # directory's own MOVED (a prefix for the consumer) or RESCAN already covers them.
    src = _as_path(event.src_path)
    if event.event_type == "moved":
        dest = _as_path(event.dest_path)
        return (
            [] if event.is_synthetic else _translate_move(src, dest, is_dir=event.is_directory, scope=scope)
        )
    if event.is_synthetic or src is None or not scope.contains(src):
        return []
    if event.event_type == "created":
        return _appeared(src, is_dir=event.is_directory, scope=scope)
    if event.event_type == "deleted":
        return [FileEvent(EventKind.DELETED, src)]
    # attrib counts: a chmod can make an unreadable file readable, and `touch` is a cheap
    # recheck for the consumer. Directory mtimes change with every entry: no content.
    if event.is_directory:
        return []
    if event.event_type == "modified":
        return [FileEvent(EventKind.CHANGED, src, writer_open=True if reports_close else None)]
    if event.event_type == "closed":
        return [FileEvent(EventKind.CHANGED, src, writer_open=False)]
    if event.event_type == "attrib":
        return [FileEvent(EventKind.CHANGED, src)]
    return []


def _translate_move(src: Path | None, dest: Path | None, *, is_dir: bool, scope: _Scope) -> list[FileEvent]:
    # One end outside the root (or unknown) makes a move a creation or a deletion here.
    src_in = src is not None and scope.contains(src)
    dest_in = dest is not None and scope.contains(dest)
    if src is not None and dest is not None and src_in and dest_in:
        return [FileEvent(EventKind.MOVED, src, dest)]
    if dest is not None and dest_in:
        return _appeared(dest, is_dir=is_dir, scope=scope)
    if src is not None and src_in:
        return [FileEvent(EventKind.DELETED, src)]
    return []


def _appeared(path: Path, *, is_dir: bool, scope: _Scope) -> list[FileEvent]:
    if not is_dir:
        return [FileEvent(EventKind.CHANGED, path)]
    # Files may land in a new directory before its watch exists; only a scan finds them.
    # A non-recursive root does not cover a subdirectory's contents at all.
    return [FileEvent(EventKind.RESCAN, path)] if scope.recursive else []


def _deliver(sink: EventSink, event: FileEvent) -> None:
    try:
        sink(event)
    except Exception:
        # A raising sink must not kill watchdog's dispatcher thread (all roots would go deaf).
        log.exception("event_sink_failed", kind=event.kind.value, path=display_path(event.path))


class _Handler(FileSystemEventHandler):
    """Receives one root's watchdog events on the observer thread."""

    def __init__(self, scope: _Scope, sink: EventSink) -> None:
        super().__init__()
        self._scope = scope
        self._sink = sink
        # Set before each (re)schedule: only inotify reports that a writer closed a file.
        self.reports_close = False

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):
            # The kernel's inotify queue overflowed: watchdog queues this behind the events it
            # still read, and what was dropped can only be found by looking at the disk.
            log.warning("inotify_overflow", roots=[str(self._scope.root)], action="rescanning")
            _deliver(self._sink, FileEvent(EventKind.RESCAN, self._scope.root))
            return
        for file_event in _translate(event, self._scope, reports_close=self.reports_close):
            _deliver(self._sink, file_event)


@dataclass(eq=False)
class _Root:
    scope: _Scope
    handler: _Handler
    mode: WatchMode | None = None
    watch: ObservedWatch | None = None
    dirs: int = 0  # directories a native watch of this root costs (inotify watches)
    problem: str | None = None  # why it is not watched; logged once per distinct reason
    rescan_on_schedule: bool = False  # events may have been missed since it was last watched


def _read_inotify_setting(name: str) -> int | None:
    """Current value of ``fs.inotify.<name>``, or None where there is no such file."""
    try:
        return int((_INOTIFY_SYSCTL_DIR / name).read_text().strip())
    except (OSError, ValueError):
        return None


def _count_dirs(root: Path, recursive: bool, stop_above: int) -> int:
    """Directories a recursive inotify watch of ``root`` needs; stops counting past ``stop_above``."""
    if not recursive:
        return 1
    count = 0
    for _dirpath, _dirnames, _files in os.walk(root):
        count += 1
        if count > stop_above:
            break
    return count


def _warn_inotify_limit(root: Path, reason: str, setting: str) -> None:
    current = _read_inotify_setting(setting)
    floor = 524288 if setting == "max_user_watches" else 1024
    suggested = max(floor, 2 * current) if current is not None else floor
    log.warning(
        "inotify_limit_reached",
        root=str(root),
        reason=reason,
        setting=f"fs.inotify.{setting}",
        current=current,
        fix=(
            f"sudo sysctl -w fs.inotify.{setting}={suggested}; persist it with "
            f"echo fs.inotify.{setting}={suggested} | sudo tee /etc/sysctl.d/90-embedd-inotify.conf, "
            "then restart embedd"
        ),
        fallback="polling: higher latency and CPU use for this root",
    )


class Watcher:
    """Watches roots with watchdog and feeds :class:`FileEvent` values to ``sink``.

    Each root uses the native observer (inotify on Linux) unless ``polling`` is set or
    inotify's limits are exhausted, in which case that root falls back to polling. A
    supervisor thread re-creates dead observers and watches (for instance after a root was
    deleted and re-created) and emits ``RESCAN(root)`` once the root is watched again.
    Starting and adding roots emits no RESCAN: the caller scans what it starts watching.
    """

    def __init__(
        self,
        roots: Sequence[tuple[Path, bool]],
        sink: EventSink,
        *,
        polling: bool = False,
        poll_interval_s: float = 1.0,
        supervise_interval_s: float = 2.0,
    ) -> None:
        self._sink = sink
        self._force_polling = polling
        self._poll_interval_s = poll_interval_s
        self._supervise_interval_s = supervise_interval_s
        self._lock = threading.RLock()
        self._roots: dict[Path, _Root] = {}
        for root, recursive in roots:
            self._roots[root] = self._new_root(root, recursive)
        self._observers: dict[WatchMode, BaseObserver] = {}
        # Events decided under the lock are delivered after releasing it: a sink that asks
        # the watcher something (modes, say) must not deadlock against the supervisor.
        self._outbox: list[FileEvent] = []
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._started = False

    @property
    def polling(self) -> bool:
        """True when at least one root is watched by polling (forced or as a fallback)."""
        with self._lock:
            return any(root.mode == "polling" for root in self._roots.values())

    @property
    def modes(self) -> dict[Path, WatchMode | None]:
        """How each root is watched right now; None while it cannot be watched (missing)."""
        with self._lock:
            return {path: root.mode for path, root in self._roots.items()}

    def start(self) -> None:
        """Start watching every root; a root that cannot be watched yet is retried."""
        with self._lock:
            if self._started:
                raise RuntimeError("Watcher.start() called twice")
            self._started = True
            for root in self._roots.values():
                self._try_schedule(root)
        self._flush()
        self._supervisor = threading.Thread(
            target=self._supervise_loop, name="embedd-watch-supervisor", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        """Stop watching and join the observer threads. Safe to call more than once."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        with self._lock:
            observers = list(self._observers.values())
            self._observers.clear()
            for root in self._roots.values():
                root.mode, root.watch = None, None
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join(_JOIN_TIMEOUT_S)
            if observer.is_alive():
                log.warning(
                    "observer_join_timeout", observer=type(observer).__name__, timeout_s=_JOIN_TIMEOUT_S
                )

    def add_root(self, root: Path, recursive: bool) -> None:
        """Watch another root (config reload); replaces an existing root's recursion setting."""
        with self._lock:
            existing = self._roots.get(root)
            if existing is not None:
                if existing.scope.recursive == recursive:
                    return
                self._remove_root(root)
            new = self._new_root(root, recursive)
            self._roots[root] = new
            if self._started and not self._stopping.is_set():
                self._try_schedule(new)
        self._flush()

    def rewatch(self, root: Path) -> None:
        """Drop ``root``'s watch and watch it afresh (or once it exists), then ``RESCAN(root)``.

        For a root that went away or came back: an inotify watch follows the folder's inode, so
        a root moved away would be watched at its new place, and one re-mounted would still be
        watched on the bare mount point below the new file system.
        """
        with self._lock:
            known = self._roots.get(root)
            if known is None or self._stopping.is_set():
                return
            self._unschedule(known)
            known.rescan_on_schedule = True
            if self._started:
                self._try_schedule(known)
        self._flush()

    def remove_root(self, root: Path) -> None:
        """Stop watching ``root``; unknown roots are ignored."""
        with self._lock:
            self._remove_root(root)

    def supervise(self) -> None:
        """Re-watch roots whose observer or watch died, and roots that were missing.

        Called periodically by the supervisor thread; callable directly (tests).
        """
        with self._lock:
            if self._stopping.is_set():
                return
            self._revive_observers()
            self._revive_watches()
            for root in self._roots.values():
                if root.mode is None:
                    self._try_schedule(root)
        self._flush()

    # -- internals; everything below runs under self._lock unless it says otherwise --

    def _flush(self) -> None:
        """Deliver what the locked sections decided; call without holding the lock."""
        with self._lock:
            events, self._outbox = self._outbox, []
        for event in events:
            _deliver(self._sink, event)

    def _remove_root(self, root: Path) -> None:
        gone = self._roots.pop(root, None)
        if gone is not None:
            self._unschedule(gone)
            log.info("watch_root_removed", root=str(root))

    def _new_root(self, root: Path, recursive: bool) -> _Root:
        scope = _Scope(root, recursive)
        return _Root(scope=scope, handler=_Handler(scope, self._sink))

    def _observer(self, mode: WatchMode) -> BaseObserver:
        observer = self._observers.get(mode)
        if observer is None:
            # Started before any watch is scheduled so that schedule() adds the watch right
            # away and raises the inotify limit errors to us, root by root.
            observer = Observer() if mode == "native" else self._polling_observer()
            observer.start()
            self._observers[mode] = observer
        return observer

    def _polling_observer(self) -> BaseObserver:
        # watchdog's PollingObserver walks with os.stat: it descends into symlinked folders,
        # indexes what lies outside the root under aliases, and two links to "." make one
        # snapshot take 2**40 steps. lstat() sees a link as a link and never follows it.
        return PollingObserverVFS(os.lstat, os.scandir, polling_interval=self._poll_interval_s)

    def _try_schedule(self, root: _Root) -> None:
        path = root.scope.root
        if not path.is_dir():
            self._unavailable(root, "missing or not a directory")
            return
        if not self._force_polling:
            try:
                if self._native_budget_exceeded(root):
                    _warn_inotify_limit(
                        path, "the tree has more directories than inotify may watch", "max_user_watches"
                    )
                else:
                    self._schedule_on(root, "native")
                    return
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    _warn_inotify_limit(path, str(exc), "max_user_watches")
                elif exc.errno == errno.EMFILE:
                    _warn_inotify_limit(path, str(exc), "max_user_instances")
                else:
                    self._unavailable(root, str(exc))
                    return
        try:
            self._schedule_on(root, "polling")
        except OSError as exc:
            self._unavailable(root, str(exc))

    def _native_budget_exceeded(self, root: _Root) -> bool:
        # watchdog silently skips subdirectories whose watch fails, so a tree larger than
        # the limit would be watched only in part; count first instead of finding out late.
        limit = _read_inotify_setting("max_user_watches")
        if limit is None:
            return False
        used = sum(other.dirs for other in self._roots.values() if other.mode == "native")
        root.dirs = _count_dirs(root.scope.root, root.scope.recursive, stop_above=limit)
        return used + root.dirs > limit

    def _schedule_on(self, root: _Root, mode: WatchMode) -> None:
        observer = self._observer(mode)
        root.handler.reports_close = mode == "native"
        root.watch = observer.schedule(root.handler, str(root.scope.root), recursive=root.scope.recursive)
        root.mode = mode
        root.problem = None
        log.info("watch_root_scheduled", root=str(root.scope.root), recursive=root.scope.recursive, mode=mode)
        if root.rescan_on_schedule:
            root.rescan_on_schedule = False
            self._outbox.append(FileEvent(EventKind.RESCAN, root.scope.root))

    def _unavailable(self, root: _Root, reason: str) -> None:
        root.mode, root.watch = None, None
        root.rescan_on_schedule = True
        if root.problem != reason:
            root.problem = reason
            log.warning(
                "watch_root_unavailable",
                root=str(root.scope.root),
                reason=reason,
                action=f"retrying every {self._supervise_interval_s:g} s",
            )

    def _unschedule(self, root: _Root) -> None:
        observer = self._observers.get(root.mode) if root.mode is not None else None
        if observer is not None and root.watch is not None:
            with contextlib.suppress(KeyError):  # already gone with its emitter
                observer.unschedule(root.watch)
        root.mode, root.watch = None, None

    def _emitter_alive(self, root: _Root) -> bool:
        observer = self._observers.get(root.mode) if root.mode is not None else None
        if observer is None:
            return False
        return any(emitter.watch == root.watch and emitter.is_alive() for emitter in list(observer.emitters))

    def _supervise_loop(self) -> None:
        """Runs on the supervisor thread until stop()."""
        while not self._stopping.wait(self._supervise_interval_s):
            try:
                self.supervise()
            except Exception:
                log.exception("watch_supervisor_failed")

    def _revive_observers(self) -> None:
        for mode, observer in list(self._observers.items()):
            if observer.is_alive():
                continue
            log.error("observer_died", mode=mode, action="restarting it and rescanning its roots")
            del self._observers[mode]
            try:
                observer.stop()  # its emitter threads may outlive the dispatcher
            except Exception:
                log.exception("observer_cleanup_failed", mode=mode)
            for root in self._roots.values():
                if root.mode == mode:
                    root.mode, root.watch = None, None
                    root.rescan_on_schedule = True

    def _revive_watches(self) -> None:
        for root in self._roots.values():
            if root.mode is None or self._emitter_alive(root):
                continue
            # watchdog stops a watch whose root was deleted; other deaths are bugs.
            log.warning("watch_lost", root=str(root.scope.root), mode=root.mode)
            self._unschedule(root)
            root.rescan_on_schedule = True
            if not root.scope.root.is_dir():
                # The emitter's own DirDeletedEvent can still sit in watchdog's queue, and
                # unscheduling drops it: say it again (a duplicate delete is harmless).
                self._outbox.append(FileEvent(EventKind.DELETED, root.scope.root))
