"""Coalesces file events per path until the file is quiet and complete.

Pure: time comes from an injected clock and file state from an injected ``stat``; no threads
of its own. Producers call :meth:`Debouncer.push` from any thread; one consumer waits on
:meth:`Debouncer.next_deadline` and collects :meth:`Debouncer.due` events.

Rules (``q`` = ``quiet_s``):

- One pending event per path; a new event for the path replaces or merges into it:
  CHANGED+CHANGED -> CHANGED, CHANGED+DELETED -> DELETED, DELETED+CHANGED -> CHANGED (an
  editor's delete-and-recreate), MOVED(a->p)+CHANGED(p) -> MOVED(a->p) that must be checked,
  MOVED(a->p)+DELETED(p) -> DELETED(p) and DELETED(a).
- MOVED(a->b) takes the pending state of ``a`` with it (and of everything pending below
  ``a/``, which matters when ``a`` is a directory). A temp file written and renamed onto its
  target therefore yields exactly one event, MOVED(tmp->target), and none for the temp. By
  the MOVED contract (see ``daemon.watch.watcher``) a source the consumer never indexed makes it a
  CHANGED(target); that keeps the cheap relabel for a real rename of an indexed file.
- Chains collapse: MOVED(a->b)+MOVED(b->c) -> MOVED(a->c) plus DELETED(b), because the first
  rename replaced whatever ``b`` held before.
- A path is due once no event touched it for ``q``. A CHANGED (or a MOVED carrying a change)
  also needs two ``stat`` samples at least ``q`` apart that agree; the first is taken by
  :meth:`push`, so a complete file costs no extra latency, while a file still being copied
  keeps moving and is held back. DELETED and plain MOVED need no stat. A CHANGED whose file
  is gone when it comes due is reported as DELETED.
- A file a writer may still hold open (a CHANGED with ``writer_open`` True: written, no
  close seen since) waits for the close, which makes it due after ``q`` as usual; a writer
  that never closes (a log kept open) gets it indexed after ``open_quiet_s`` without events.
  A copy that pauses longer than ``q`` between pieces is therefore still indexed once, whole.
- RESCAN(dir) passes through after ``q``; a pending RESCAN of an ancestor absorbs it, and it
  follows its directory when that is moved.
- Order: due events come out in the order their paths first became pending, and an event is
  held back while an earlier MOVED touching its path (or an ancestor of it) is still
  pending, so that, e.g., a new file at a rename's old path is never indexed before the
  rename is applied.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from daemon.watch.events import EventKind, FileEvent

Clock = Callable[[], float]
"""Monotonic seconds."""

Sample = tuple[int, int]
"""(size, mtime_ns) of a file."""

StatFn = Callable[[Path], Sample | None]
"""(size, mtime_ns) of a path, or None if it does not exist."""

# How long a file a writer still holds open must be quiet before it is due anyway.
OPEN_QUIET_S: Final = 30.0

# An unreadable path is "stable" at once: the consumer's read then reports the real error,
# naming the file, instead of the file waiting here forever.
_UNREADABLE: Final[Sample] = (-1, -1)


def default_stat(path: Path) -> Sample | None:
    """(size, mtime_ns) of ``path``, None when it does not exist, a fixed value when unreadable."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return _UNREADABLE
    return (st.st_size, st.st_mtime_ns)


@dataclass(eq=False)
class _Entry:
    """The coalesced pending state of one path (the destination for a MOVED)."""

    kind: EventKind
    path: Path
    src: Path | None  # MOVED only
    seq: int  # when the path became pending: output order
    last: float  # time of the latest event for it
    needs_stable: bool = False
    sample: Sample | None = None
    sampled_at: float = 0.0
    due_at: float = 0.0  # when to look at it next
    heap_at: float = 0.0  # time of its live heap item
    token: int = 0  # identifies its live heap item; older items are stale
    scheduled: bool = False
    alive: bool = True
    writer_open: bool = False  # written through a descriptor whose close was not seen yet
    # str forms of path and src: the ancestor indexes hash strings, far cheaper than Paths.
    key: str = field(init=False)
    src_key: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.key = os.fspath(self.path)
        self.src_key = None if self.src is None else os.fspath(self.src)

    def to_event(self) -> FileEvent:
        if self.kind is EventKind.MOVED:
            assert self.src is not None
            return FileEvent(EventKind.MOVED, self.src, self.path)
        if self.kind is EventKind.CHANGED and self.sample is None:
            return FileEvent(EventKind.DELETED, self.path)
        return FileEvent(self.kind, self.path)


def _at_or_above(path: Path) -> Iterator[Path]:
    yield path
    yield from path.parents


def _parents(key: str) -> Iterator[str]:
    """The ancestors of a path given as a string, nearest first (``/a/b`` -> ``/a``, ``/``)."""
    cut = key.rfind(os.sep)
    while cut > 0:
        key = key[:cut]
        yield key
        cut = key.rfind(os.sep)
    if cut == 0 and key != os.sep:
        yield os.sep


def _rebase(path: Path, old: Path, new: Path) -> Path:
    return new / path.relative_to(old)


class Debouncer:
    """Coalesces events per path until each is quiet (and, for content, size-stable)."""

    def __init__(
        self,
        quiet_s: float,
        *,
        clock: Clock = time.monotonic,
        stat: StatFn = default_stat,
        open_quiet_s: float = OPEN_QUIET_S,
    ) -> None:
        if quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {quiet_s}")
        self._quiet_s = quiet_s
        self._open_quiet_base = open_quiet_s
        self._open_quiet_s = max(quiet_s, open_quiet_s)
        self._clock = clock
        self._stat = stat
        self._lock = threading.Lock()
        self._files: dict[Path, _Entry] = {}
        self._rescans: dict[Path, _Entry] = {}
        self._below: Counter[str] = Counter()  # directory -> pending file entries below it
        self._moves: dict[str, set[_Entry]] = {}  # src and dest of pending MOVEDs -> those entries
        self._heap: list[tuple[float, int, int, _Entry]] = []
        self._seq = itertools.count()
        self._tiebreak = itertools.count()

    def set_quiet(self, quiet_s: float) -> None:
        """Change the quiet period (a configuration reload); events already pending keep their times."""
        if quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {quiet_s}")
        with self._lock:
            self._quiet_s = quiet_s
            self._open_quiet_s = max(quiet_s, self._open_quiet_base)

    def push(self, event: FileEvent) -> None:
        """Record an event. Thread-safe; stats the file for CHANGED and MOVED."""
        sample: Sample | None = None
        if event.kind is EventKind.CHANGED:
            sample = self._stat(event.path)
        elif event.kind is EventKind.MOVED:
            assert event.dest is not None
            sample = self._stat(event.dest)
        with self._lock:
            now = self._clock()
            if event.kind is EventKind.CHANGED:
                self._push_changed(event.path, sample, now, event.writer_open, event.from_scan)
            elif event.kind is EventKind.DELETED:
                self._push_deleted(event.path, now)
            elif event.kind is EventKind.MOVED:
                assert event.dest is not None
                self._push_moved(event.path, event.dest, sample, now)
            else:
                self._push_rescan(event.path, now)

    def due(self) -> list[FileEvent]:
        """Remove and return the events that are ready, oldest path first.

        Stats the files that need a stability check (under the lock: a push waits for it).
        """
        with self._lock:
            now = self._clock()
            looked_at: list[_Entry] = []
            while (top := self._peek()) is not None and top.heap_at <= now:
                heapq.heappop(self._heap)
                top.scheduled = False
                looked_at.append(top)
            ready: list[_Entry] = []
            for entry in looked_at:
                if entry.needs_stable and not self._stable(entry, now):
                    self._schedule(entry, self._ready_at(entry))
                else:
                    ready.append(entry)
            out: list[FileEvent] = []
            for entry in sorted(ready, key=lambda e: e.seq):
                blocker = self._blocker(entry)
                if blocker is not None:
                    self._schedule(entry, max(self._ready_at(entry), blocker.due_at))
                    continue
                self._remove(entry)
                out.append(entry.to_event())
            return out

    def next_deadline(self) -> float | None:
        """Clock time at which :meth:`due` may next return something; None if nothing is pending."""
        with self._lock:
            top = self._peek()
            return None if top is None else top.heap_at

    def pending(self) -> int:
        """Number of paths with a pending event."""
        with self._lock:
            return len(self._files) + len(self._rescans)

    def pending_paths(self) -> list[Path]:
        """The file paths with a pending event, oldest first."""
        with self._lock:
            return [e.path for e in sorted(self._files.values(), key=lambda e: e.seq)]

    def pending_files(self) -> int:
        """Number of file paths with a pending event (folder rescans not counted)."""
        with self._lock:
            return len(self._files)

    # -- coalescing (all under self._lock) --

    def _push_changed(
        self,
        path: Path,
        sample: Sample | None,
        now: float,
        writer_open: bool | None = None,
        from_scan: bool = False,
    ) -> None:
        entry = self._files.get(path)
        if entry is None:
            entry = _Entry(EventKind.CHANGED, path, None, next(self._seq), now, True, sample, now)
            entry.writer_open = bool(writer_open)
            self._add(entry)
            return
        if entry.kind is EventKind.DELETED:
            entry.kind = EventKind.CHANGED  # deleted and recreated: index the new file
        elif from_scan and sample == entry.sample:
            # A rescan re-reporting a pending file that did not move since: keep its clock.
            # Restarting it would postpone, forever, a file whose close event was lost (an
            # inotify overflow) whenever rescans come more often than ``open_quiet_s``.
            return
        # CHANGED stays CHANGED; a MOVED stays a MOVED whose destination must be checked.
        entry.needs_stable, entry.sample, entry.sampled_at, entry.last = True, sample, now, now
        if writer_open is not None:
            entry.writer_open = writer_open
        self._schedule(entry, self._ready_at(entry))

    def _push_deleted(self, path: Path, now: float) -> None:
        entry = self._files.get(path)
        if entry is None:
            self._add(_Entry(EventKind.DELETED, path, None, next(self._seq), now))
            return
        if entry.kind is EventKind.MOVED:
            # a -> path, then path deleted: both a's and path's old contents are gone.
            assert entry.src is not None
            self._remove(entry)
            self._add(_Entry(EventKind.DELETED, path, None, next(self._seq), now))
            self._vacate(entry.src, now)
            return
        entry.kind, entry.needs_stable, entry.sample, entry.last = EventKind.DELETED, False, None, now
        entry.writer_open = False
        self._schedule(entry, self._ready_at(entry))

    def _push_moved(self, src: Path, dest: Path, sample: Sample | None, now: float) -> None:
        if src == dest:
            self._push_changed(dest, sample, now)
            return
        vacated: list[Path] = []
        moved = self._files.get(src)
        if moved is not None:
            self._remove(moved)
        self._take_over(dest, src, vacated)
        origin, needs_stable, writer_open = src, False, False
        if moved is not None:
            needs_stable, writer_open = moved.needs_stable, moved.writer_open
            if moved.kind is EventKind.MOVED:
                assert moved.src is not None
                origin = moved.src
                vacated.append(src)  # src's own old content was replaced by the first move
        if origin == dest:
            # Renamed away and back: the content is where it started; just recheck it.
            entry = _Entry(EventKind.CHANGED, dest, None, next(self._seq), now, True, sample, now)
        else:
            entry = _Entry(EventKind.MOVED, dest, origin, next(self._seq), now, needs_stable, sample, now)
        entry.writer_open = writer_open  # a writer's descriptor follows the file's new name
        self._add(entry)
        self._rekey_below(src, dest, now, vacated)
        for path in vacated:
            self._vacate(path, now)

    def _take_over(self, dest: Path, incoming_src: Path | None, vacated: list[Path]) -> None:
        """Drop the pending state of ``dest``, which something is being moved onto."""
        replaced = self._files.get(dest)
        if replaced is None:
            return
        self._remove(replaced)
        if replaced.kind is EventKind.MOVED and replaced.src != incoming_src:
            assert replaced.src is not None
            vacated.append(replaced.src)  # its content was overwritten: gone everywhere

    def _rekey_below(self, src: Path, dest: Path, now: float, vacated: list[Path]) -> None:
        """Move pending entries below directory ``src`` to ``dest`` (a directory rename)."""
        if self._below[os.fspath(src)] > 0:
            children = sorted(
                (e for p, e in self._files.items() if p != src and p.is_relative_to(src)),
                key=lambda e: e.seq,
            )
            for child in children:
                if not child.alive:
                    continue
                self._remove(child)
                path = _rebase(child.path, src, dest)
                child_src = child.src
                if child_src is not None and child_src.is_relative_to(src):
                    child_src = _rebase(child_src, src, dest)
                self._take_over(path, child_src, vacated)
                kind = child.kind
                if kind is EventKind.MOVED and child_src == path:
                    kind, child_src = EventKind.CHANGED, None
                # Same inode, same size and mtime: the old sample stays valid at the new path.
                rekeyed = _Entry(
                    kind,
                    path,
                    child_src,
                    next(self._seq),
                    now,
                    child.needs_stable,
                    child.sample,
                    child.sampled_at,
                )
                rekeyed.writer_open = child.writer_open
                self._add(rekeyed)
        for rescan in [e for p, e in self._rescans.items() if p.is_relative_to(src)]:
            if not rescan.alive:
                continue
            self._remove(rescan)
            self._push_rescan(_rebase(rescan.path, src, dest), now)

    def _vacate(self, path: Path, now: float) -> None:
        """Record that ``path``'s previous content is gone, unless newer news is pending."""
        if path not in self._files:
            self._add(_Entry(EventKind.DELETED, path, None, next(self._seq), now))

    def _push_rescan(self, path: Path, now: float) -> None:
        for above in _at_or_above(path):
            covering = self._rescans.get(above)
            if covering is not None:
                covering.last = now
                self._schedule(covering, self._ready_at(covering))
                return
        for covered in [e for p, e in self._rescans.items() if p.is_relative_to(path)]:
            self._remove(covered)
        self._add(_Entry(EventKind.RESCAN, path, None, next(self._seq), now))

    # -- bookkeeping --

    def _add(self, entry: _Entry) -> None:
        if entry.kind is EventKind.RESCAN:
            self._rescans[entry.path] = entry
        else:
            self._files[entry.path] = entry
            self._below.update(_parents(entry.key))
            if entry.kind is EventKind.MOVED:
                assert entry.src_key is not None
                self._moves.setdefault(entry.src_key, set()).add(entry)
                self._moves.setdefault(entry.key, set()).add(entry)
        self._schedule(entry, self._ready_at(entry))

    def _remove(self, entry: _Entry) -> None:
        entry.alive = False
        if entry.kind is EventKind.RESCAN:
            del self._rescans[entry.path]
            return
        del self._files[entry.path]
        for parent in _parents(entry.key):
            left = self._below[parent] - 1
            if left > 0:
                self._below[parent] = left
            else:
                del self._below[parent]
        if entry.kind is EventKind.MOVED:
            assert entry.src_key is not None
            for key in (entry.src_key, entry.key):
                refs = self._moves[key]
                refs.discard(entry)
                if not refs:
                    del self._moves[key]

    def _ready_at(self, entry: _Entry) -> float:
        quiet = self._open_quiet_s if entry.writer_open else self._quiet_s
        if entry.needs_stable:
            return max(entry.last, entry.sampled_at) + quiet
        return entry.last + quiet

    def _stable(self, entry: _Entry, now: float) -> bool:
        if now - entry.sampled_at < self._quiet_s:
            return False  # keep the older sample so the pair stays quiet_s apart
        sample = self._stat(entry.path)
        if sample == entry.sample:
            return True
        entry.sample, entry.sampled_at = sample, now
        return False

    def _blocker(self, entry: _Entry) -> _Entry | None:
        """An earlier pending MOVED that must reach the consumer before ``entry`` does."""
        if entry.kind is EventKind.RESCAN or not self._moves:
            return None
        keys = [entry.key] if entry.src_key is None else [entry.key, entry.src_key]
        for key in keys:
            for above in itertools.chain((key,), _parents(key)):
                for move in self._moves.get(above, ()):
                    if move is not entry and move.seq < entry.seq:
                        return move
        return None

    def _schedule(self, entry: _Entry, at: float) -> None:
        entry.due_at = at
        if entry.scheduled and at >= entry.heap_at:
            return  # its heap item surfaces earlier and is moved on by _peek
        self._push_heap(entry, at)

    def _push_heap(self, entry: _Entry, at: float) -> None:
        entry.token += 1
        entry.heap_at = at
        entry.scheduled = True
        heapq.heappush(self._heap, (at, next(self._tiebreak), entry.token, entry))

    def _peek(self) -> _Entry | None:
        """The entry with the earliest live heap item, after dropping and fixing stale items."""
        while self._heap:
            at, _, token, entry = self._heap[0]
            if not entry.alive or token != entry.token:
                heapq.heappop(self._heap)
            elif entry.due_at > at:
                heapq.heappop(self._heap)
                self._push_heap(entry, entry.due_at)
            else:
                return entry
        return None
