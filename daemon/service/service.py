"""The worker: file events -> pipeline -> store, the startup reconcile and periodic rescan, and
the loop that drives them until a stop.

Data flow: watchdog thread -> Watcher -> Debouncer -> this worker: extract, chunk, embed what is
new, apply to the store, coalesced atomic save (``Saver``). The startup scan and the periodic
rescan feed the same Debouncer as live events, so there is one way in. Process concerns
(signals, the model, the store's lock) live in ``daemon.service.runner``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog

from daemon.config import Config, WatchConfig
from daemon.embed.embedder import Embedder
from daemon.errors import ExtractError, IndexingInterrupted
from daemon.log import display_path
from daemon.loops import StopFlag
from daemon.service.boundary import report_unexpected
from daemon.service.files import FileBook, build_rows, page
from daemon.service.filestate import (
    FailedAs,
    extract_limits,
    failed_as,
    file_state,
    fingerprint_for,
    not_regular,
)
from daemon.service.folders import FolderGuard, below_any, watch_of
from daemon.service.forget import ForgetJobs, matching, unwatched
from daemon.service.moves import Drop, plan_move
from daemon.service.notices import Notices
from daemon.service.parts import PartsFactory, build_parts
from daemon.service.progress import Progress
from daemon.service.reload import apply_config
from daemon.service.sdnotify import Notifier
from daemon.service.survey import identity, survey
from daemon.service.throughput import BulkProgress, Throughput
from daemon.sinks.mirror import Mirror
from daemon.store.snapshot import Published
from daemon.store.store import Store
from daemon.watch import scan
from daemon.watch.events import EventKind, FileEvent

__all__ = ["Service", "StopFlag", "Tick", "extract_limits", "failed_as", "file_state", "fingerprint_for"]

log = structlog.get_logger("embedd")

# A file with this many new chunks gets a progress report of its own.
BIG_FILE_CHUNKS = 256


@dataclass(frozen=True)
class Tick:
    """What one turn of the worker did: events handled, and how long it may sleep now."""

    handled: int
    wait_s: float


class Service:
    """The running daemon's worker for one store: drives its parts (``daemon.service.parts``)."""

    def __init__(
        self,
        config: Config,
        embedder: Embedder,
        store: Store,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        mirror: Mirror | None = None,
        store_lock: threading.RLock | None = None,
        published: Published | None = None,
        on_ready: Callable[[], None] | None = None,
        notices: Notices | None = None,
        parts: PartsFactory | None = None,
    ) -> None:
        """``parts`` builds the pipeline, debouncer, watcher and saver from the sink the watcher
        feeds (``build_parts`` for ``config`` when None)."""
        self.config = config
        self.store = store
        # Held while the store changes or is written: sink threads read it under the same lock.
        self._store_lock = store_lock or threading.RLock()
        # Searches on other threads read what is published here, after each change is whole.
        self._published = published
        self._on_ready = on_ready
        self._mirror = mirror
        self.notifier = notifier or Notifier()
        self._clock = clock
        # Every fact the worker logs for people is also told here, for the parts that follow it.
        self.notices = notices or Notices()
        if parts is None:
            parts = partial(build_parts, config, embedder, store, clock=clock, notices=self.notices)
        built = parts(self.push)
        self.pipeline, self.debouncer, self.watcher = built.pipeline, built.debouncer, built.watcher
        self._saver = built.saver
        self._wake = threading.Event()
        # Files that failed, by source, with the state they failed in: retried once they change.
        self._failed: dict[str, FailedAs] = {}
        self._throughput = Throughput(clock)
        self._bulk = BulkProgress(self.notices)
        self._stop: StopFlag = threading.Event()
        self._next_rescan = clock() + config.daemon.rescan_interval_s
        self._depth = 0  # nested _changing() blocks: the outermost publishes
        self._batch: deque[FileEvent] = deque()  # file events taken from the debouncer, not started
        self._current: Path | None = None  # the file being handled
        # Folders that cannot be reached: their entries stay until they are back.
        self.guard = FolderGuard(self.notices, self._sources_under, self.watcher.rewatch)
        self.outages = self.guard.outages
        # `embedd forget` asked of the running daemon, done on this worker thread.
        self.book = FileBook()  # why a file is not indexed, when one was
        self.forgets = ForgetJobs(lambda: self._wake.set())  # noqa: PLW0108 - run() replaces _wake

    # -- events -------------------------------------------------------------------------

    def push(self, event: FileEvent) -> None:
        """The watcher's sink (on watchdog's thread): queue ``event`` and wake the worker."""
        self.debouncer.push(event)
        self._wake.set()

    def _locate(self, path: Path) -> tuple[WatchConfig, str] | None:
        return scan.locate(self.config.watches, path)

    def _sources_under(self, path: Path) -> list[str]:
        return scan.sources_under(self.config.watches, self.store.sources(), path)

    def handle(self, event: FileEvent) -> None:
        """Apply one coalesced event to the store."""
        self._ignore_files_changed(event)
        if event.kind is EventKind.CHANGED:
            self._changed(event.path)
        elif event.kind is EventKind.DELETED:
            self._deleted(event.path)
        elif event.kind is EventKind.MOVED:
            assert event.dest is not None
            self._moved(event.path, event.dest)
        elif event.kind is EventKind.RESCAN:
            self.reconcile(event.path)

    def _ignore_files_changed(self, event: FileEvent) -> None:
        """A .gitignore, .ignore or .git/info/exclude changed: files it now ignores leave the
        store, files it no longer ignores are queued (a reconcile of its folder)."""
        for path in (event.path, event.dest):
            folder = scan.ignore_rules_changed(self.config.watches, path) if path is not None else None
            if path is None or folder is None:
                continue
            for source in self._sources_under(folder):
                old = scan.path_of(self.config.watches, source)
                if old is not None and self._locate(old) is None:
                    self.remove(source, reason=f"ignored since {display_path(path)} changed")
            self.reconcile(folder)

    def _changed(self, path: Path) -> None:
        located = self._locate(path)
        if located is None:
            return
        watch, source = located
        try:
            st = path.lstat()
        except FileNotFoundError:
            if self.guard.root_ok(watch, at_scan=False):
                self.remove(source, reason="file vanished")
            return
        except OSError as exc:
            self._skip(source, path, None, f"cannot stat: {exc.strerror or exc}")
            return
        state = file_state(st, path)
        if not stat.S_ISREG(st.st_mode):
            self._skip(source, path, failed_as(st, path), not_regular(st))
            return
        if self.store.file_state(source) == state or self._failed.get(source) == failed_as(st, path):
            return
        why_not = scan.unindexable(watch, source, path)
        if why_not is not None:
            self._skip(source, path, failed_as(st, path), why_not)
            return
        self._index(path, source, st)

    def _index(self, path: Path, source: str, st: os.stat_result) -> None:
        state = file_state(st, path)
        bar: Progress | None = None

        def on_embedded(done: int, total: int) -> None:
            nonlocal bar
            if bar is None and total >= BIG_FILE_CHUNKS:
                bar = Progress(f"embedding {source}", total, unit="chunks")
            if bar is not None and done:
                bar.advance(done)
            self.notifier.keepalive()

        try:
            # The slow part (extraction, embedding) holds no lock: sink reads and saves go on.
            prepared = self.pipeline.prepare(path, source, state, on_embedded, self._stop.is_set)
        except ExtractError as exc:
            self._skip(source, path, failed_as(st, path), exc.reason)
            return
        except IndexingInterrupted as exc:
            log.info(
                "file_abandoned",
                path=display_path(path),
                reason=str(exc),
                hint="indexed again at the next start; its stored entries are unchanged",
            )
            return
        finally:
            if bar is not None:
                bar.close()
        with self._changing():
            result = self.pipeline.apply(prepared)
            self._finished(path)  # with the store change, so status never counts it twice
        self._failed.pop(source, None)
        self.book.indexed(source)
        self._changed_sources(source)
        for warning in result.warnings:
            log.warning("file_warning", path=display_path(path), reason=warning)
        fact = {
            "source": source,
            "chunks": result.chunks,
            "embedded": result.embedded,
            "reused": result.reused,
            "tokens": result.tokens,
        }
        log.info(
            "file_indexed",
            path=str(path),
            **fact,
            quarantined=result.quarantined,
            seconds=round(result.seconds, 3),
        )
        self.notices.notify("file_indexed", **fact, seconds=result.seconds)
        self._throughput.add(chunks=result.chunks, embedded=result.embedded, tokens=result.tokens)

    def _skip(self, source: str, path: Path, state: FailedAs | None, reason: str) -> None:
        """Log once per file state why a file is not indexed; what is stored for it stays."""
        if state is not None and self._failed.get(source) == state:
            return
        if state is not None:
            self._failed[source] = state
        self.book.problem(source, "skipped", reason)
        log.warning(
            "file_skipped",
            path=display_path(path),
            source=display_path(source),
            reason=reason,
            kept_entries=len(self.store.entries_for(source)),
        )
        self.notices.notify("file_skipped", source=source, reason=reason)

    def remove(self, source: str, *, reason: str) -> None:
        """Drop ``source``'s entries (logged, noticed, marked for the sinks); nothing when unknown."""
        self._failed.pop(source, None)
        self.book.removed(source)
        if self.store.file_state(source) is None:
            return
        with self._changing():
            self.pipeline.remove(source)
        self._changed_sources(source)
        log.info("file_removed", source=source, reason=reason)
        self.notices.notify("file_removed", source=source, reason=reason)

    def _deleted(self, path: Path) -> None:
        watch = watch_of(self.config.watches, path)
        if watch is None or not self.guard.root_ok(watch, at_scan=False):
            return  # unreachable, not emptied: everything stored for it stays
        if path == watch.path:
            # watchdog reports the root's own deletion (or unmount); it is here again: rescan it.
            self.reconcile(path)
            return
        located = self._locate(path)
        if located is not None:
            self.remove(located[1], reason="deleted")
        if path.is_dir() and not path.is_symlink():
            self.reconcile(path)  # a folder reported gone is still there (a nested unmount): look
            return
        for source in self._sources_under(path):
            self.remove(source, reason="folder deleted")

    def _moved(self, src: Path, dest: Path) -> None:
        old = self._locate(src)
        if old is not None and self.store.file_state(old[1]) is not None:
            self._rename_or_reindex(old[1], dest)
            return
        under = self._sources_under(src)
        if under:
            for source in under:
                old_path = scan.path_of(self.config.watches, source)
                if old_path is not None:
                    self._rename_or_reindex(source, dest / old_path.relative_to(src))
            return
        # The source was never indexed (an editor's temp file, a download): a plain change.
        self._changed(dest)

    def _rename_or_reindex(self, old_source: str, dest: Path) -> None:
        plan = plan_move(self.config.watches, old_source, self.store.file_state(old_source), dest)
        if isinstance(plan, Drop):
            self.remove(old_source, reason=plan.reason)
            if plan.reindex:
                self._changed(dest)
            return
        with self._changing():
            self.pipeline.rename(old_source, plan.source, plan.state)
        self._failed.pop(old_source, None)
        self.book.removed(old_source)
        self._changed_sources(old_source, plan.source)
        log.info("file_renamed", source=old_source, to=plan.source)
        self.notices.notify("file_renamed", source=old_source, to=plan.source)

    def reconcile(self, top: Path | None = None) -> int:
        """Bring the store in line with the disk below ``top`` (every watch when None).

        Unchanged files (size, mtime, inode) cost nothing; files that vanished leave the store,
        unless the same inode shows up under another name, which is a rename. Changed files, and
        files indexed by an older version of their format's extraction, are queued through the
        debouncer. Returns how many files were queued.
        """
        scanned: list[Path] = []
        upgraded = 0
        if top is None:  # sources no watch names any more (dropped before a restart) leave
            for source in unwatched(self.config.watches, self.store.sources()):
                self.remove(source, reason="folder no longer watched")
        for watch in self.config.watches:
            if top is not None and top != watch.path and watch.path not in top.parents:
                continue
            if not self.guard.root_ok(watch, at_scan=True):
                continue  # unreachable: nothing below it is taken as deleted
            start = top if top is not None else watch.path
            watches = self.config.watches
            found = survey(watches, watch, start, stored=self.store.file_state, failed=self._failed.get)
            for source, path, st in found.not_regular:
                self._skip(source, path, failed_as(st, path), not_regular(st))
            upgraded += found.upgraded
            for source in self._sources_under(start):
                if source in found.seen or below_any(scan.path_of(watches, source), found.unreadable):
                    continue
                old = self.store.file_state(source)
                if old is not None and identity(old) in found.new:
                    path, _ = found.new.pop(identity(old))
                    self._rename_or_reindex(source, path)
                else:
                    self.remove(source, reason="gone from disk")
            self.outages.after_walk(watch, start, found.unreadable, lambda p: len(self._sources_under(p)))
            for path in [*found.changed, *(p for p, _ in found.new.values())]:
                self.debouncer.push(FileEvent(EventKind.CHANGED, path, from_scan=True))
                scanned.append(path)
        if upgraded:
            log.info(
                "extraction_upgraded",
                files=upgraded,
                detail="files unchanged since they were indexed, but read or split differently now (a "
                "Markdown file by its headings); indexed again, unchanged chunks keep their vectors",
            )
        if scanned:
            self._bulk.start(scanned)
            self._wake.set()
        return len(scanned)

    def forget(self, prefix: str) -> list[str]:
        """Drop every source at or below ``prefix`` from the store and the sinks (``embedd forget``)."""
        gone = matching(self.store.sources(), prefix)
        for source in gone:
            self.remove(source, reason="forgotten on request")
        return gone

    def _finished(self, *paths: Path) -> None:
        """These paths are handled: no longer in progress, done in the bulk (under the store lock)."""
        self._current = None
        if self._bulk.done(*paths):
            self._throughput.report(self.debouncer.pending(), force=True)

    def _changed_sources(self, *sources: str) -> None:
        """The store changed for these sources: it must be saved, and sinks must follow."""
        if self._mirror is not None:
            self._mirror.mark(sources)
        self._saver.mark_dirty()

    def maybe_save(self, *, force: bool = False) -> None:
        """Write the store when the burst is over (nothing due) or it has been dirty too long."""
        if self._saver.maybe_save(quiet=self.debouncer.pending() == 0, force=force):
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        return (
            f"{len(self.store.sources())} files, {self.store.count} chunks, {self.debouncer.pending()} queued"
        )

    def _report_throughput(self, *, force: bool = False) -> None:
        self._throughput.report(self.debouncer.pending_files(), force=force)

    # -- the loop --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the store's lock for a change; publish the result for searches once it is whole
        (once, when the outermost of nested changes ends)."""
        with self._store_lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            if self._depth == 0 and self._published is not None:
                self._published.publish(self.store)

    def _handle_guarded(self, event: FileEvent) -> None:
        """Apply one event; an unexpected exception costs that file only, never the worker."""
        try:
            if event.kind in (EventKind.DELETED, EventKind.RESCAN):
                with self._changing():  # no extraction: one publish for all the removals
                    self.handle(event)
            else:
                self.handle(event)  # takes the lock only to apply what it read
        except Exception as exc:
            path = event.dest or event.path
            source = located[1] if (located := self._locate(path)) is not None else str(path)
            error = report_unexpected(event, source, exc)
            with contextlib.suppress(OSError):
                self._failed[source] = failed_as(path.lstat(), path)
            self.book.problem(source, "failed", error)
            self.notices.notify("file_failed", source=source, reason="unexpected error", error=error)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """For the API's threads: the store lock, waited for 5 s at most (then read anyway)."""
        locked = self._store_lock.acquire(timeout=5.0)
        try:
            yield
        finally:
            if locked:
                self._store_lock.release()

    def activity(self) -> dict[str, object]:
        """What the worker has to do, for the status API; under the store lock, which the worker
        holds to take due events, start and apply a file: each file counts once."""
        with self._reading():
            current, pending = self._current, self.debouncer.pending_files() + len(self._batch)
            held = self._published.current() if self._published is not None else None
            return {
                "queued_files": pending + (current is not None),
                "pending_files": pending,
                "in_progress": [] if current is None else [str(current)],
                "bulk_index": self._bulk.active,
                "bulk_files_total": self._bulk.total,
                "bulk_files_left": self._bulk.left,
                "unavailable_folders": self.outages.to_json(),
                **({} if held is None else {"in_memory": {"files": held.files, "chunks": held.count}}),
            }

    def files(self, state: str | None, prefix: str | None, limit: int, offset: int) -> dict[str, object]:
        """``GET /v1/files``: each file's state, one page (read under the store lock)."""
        with self._reading():
            waiting = [
                *self.debouncer.pending_paths(),
                *(e.dest or e.path for e in self._batch),
                self._current,
            ]
            rows = build_rows(
                self.store.sources(),
                [loc[1] for p in waiting if p is not None and (loc := self._locate(p)) is not None],
                problems=self.book.problems(),
                outage_of=lambda s: self.outages.of_source(self.config.watches, s),
                chunks_of=lambda s: [c.timestamp for c in self.store.entries_for(s)],
                indexed_at=self.book.indexed_at,
            )
        return page(rows, state=state, prefix=prefix, limit=limit, offset=offset)

    def apply_config(self, new: Config) -> None:
        """Apply a reloaded configuration (``daemon.service.reload.apply_config``)."""
        apply_config(self, new)

    def begin(self) -> None:
        """Scan every watch and say ready: what ``run`` does before its first tick."""
        with self._changing():
            self.reconcile()
        self.notifier.ready(self._status_line())
        if self._on_ready is not None:
            self._on_ready()
        log.info(
            "daemon_ready",
            files=len(self.store.sources()),
            chunks=self.store.count,
            queued=self.debouncer.pending(),
            watches=[str(w.path) for w in self.config.watches],
        )
        self._next_rescan = self._clock() + self.config.daemon.rescan_interval_s

    def tick(self, reloaded: Callable[[], Config | None] | None = None) -> Tick:
        """One turn of the worker: apply a reloaded configuration (when ``reloaded`` returns
        one), handle the events that are due, run asked forgets, save when due, rescan when due.

        Returns how many events it handled and how long the worker may sleep before the next
        turn (an event, a save or a rescan falls due then; a new event wakes it sooner).
        """
        self.notifier.keepalive()
        new = reloaded() if reloaded is not None else None
        if new is not None:
            with self._changing():
                self.apply_config(new)
        with self._store_lock:
            batch = self.debouncer.due()
            self._batch = deque(e for e in batch if e.kind is not EventKind.RESCAN)
        handled = 0
        for event in batch:
            if self._stop.is_set():
                break  # what is left is found again by the next start's scan
            with self._store_lock:
                if event.kind is not EventKind.RESCAN:  # a folder is no file in progress
                    self._batch.popleft()
                    self._current = event.dest or event.path
            self._handle_guarded(event)
            handled += 1
            with self._store_lock:
                self._finished(*(p for p in (event.path, event.dest) if p is not None))
            self.notifier.keepalive()
        if self._bulk.active and self.debouncer.pending_files() == 0:
            self._bulk.close()  # paths the debouncer folded into others (a rename)
        if self.forgets.pending():
            with self._changing():
                self.forgets.run(self.forget)
        with self._changing():
            self.maybe_save()
        self._report_throughput()
        now = self._clock()
        if now >= self._next_rescan:
            with self._changing():
                queued = self.reconcile()
            log.debug("rescan_done", queued=queued, seconds=round(self._clock() - now, 3))
            self._next_rescan = now + self.config.daemon.rescan_interval_s
        deadlines = [self._next_rescan, now + 1.0]
        for due in (self.debouncer.next_deadline(), self._saver.next_deadline()):
            if due is not None:
                deadlines.append(due)
        return Tick(handled, max(0.0, min(deadlines) - self._clock()))

    def finish(self) -> None:
        """Stop watching and write the store: what ``run`` does after its last tick, always."""
        self.forgets.close()
        self.notifier.stopping()
        self.watcher.stop()
        self._bulk.close()
        with self._store_lock:
            self.maybe_save(force=True)
        self._report_throughput(force=True)
        self.notifier.close()

    def run(
        self,
        stop: StopFlag,
        wake: threading.Event | None = None,
        *,
        reload: threading.Event | None = None,
        reloader: Callable[[], Config | None] | None = None,
    ) -> None:
        """Scan, then tick until ``stop`` is set; always writes the store before returning.

        When ``reload`` is set, ``reloader`` is called for a new configuration to apply.
        """

        def reloaded() -> Config | None:
            if reload is None or not reload.is_set():
                return None
            reload.clear()
            return reloader() if reloader is not None else None

        if wake is not None:
            self._wake = wake
        self._stop = stop
        self.watcher.start()
        try:
            self.begin()
            while not stop.is_set():
                self._wake.wait(self.tick(reloaded).wait_s)
                self._wake.clear()
        finally:
            self.finish()
