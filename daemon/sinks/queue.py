"""What a sink still lacks, on disk: the sources whose rows changed since it last took them.

The queue holds source names, not vectors: the store is the truth, so bringing a sink in
line with one source means reading that source's current entries from the store (or
learning it is gone). It is therefore bounded by the number of files, survives restarts,
and a source changed ten times while the sink was down is sent once.

The file (``<store>.sink-<name>.queue``) is a journal of JSON lines, appended as sources are
marked (fsynced: losing a mark would lose a change) and done (not fsynced: losing one only
sends a source again), and rewritten atomically when it has grown well past what it holds.
A torn last line, as a crash can leave, is ignored.

``Backoff`` (from ``daemon.loops``) is the retry schedule of a failing sink.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import orjson
import structlog

from daemon.errors import SinkError
from daemon.loops import Backoff
from daemon.store.io import AtomicWriter, remove_stale_temps

__all__ = ["Backoff", "QueueLag", "SinkQueue", "queue_path"]

log = structlog.get_logger(__name__)

VERSION = 1
COMPACT_MIN_LINES = 256


def queue_path(store: Path, sink: str) -> Path:
    """The queue file of sink ``sink`` beside the store at ``store``."""
    return store.with_name(f"{store.name}.sink-{quote(sink, safe='')}.queue")


@dataclass(frozen=True)
class QueueLag:
    """How far a sink is behind its store, as ``embedd status`` shows it."""

    pending: int  # sources whose rows the sink does not have as the store has them
    oldest_age_s: float | None  # since the oldest of them was marked; None when none is pending
    full_sync: bool  # the whole store is still to be loaded into the sink
    error: str | None  # why the last attempt failed; None when it succeeded
    error_since: float | None  # wall-clock time of the first failure in a row


@dataclass(slots=True)
class _Mark:
    seq: int  # bumped at every mark, so ``done`` can tell a source changed after ``take``
    since: float  # wall-clock time it became pending


@dataclass
class _State:
    marks: dict[str, _Mark]  # insertion order is the order sources are taken in
    full: bool = False
    incarnation: str | None = None  # of the collection the sink last wrote into
    error: str | None = None
    error_since: float | None = None
    lines: int = 0
    torn: bool = False


def _replay(data: bytes) -> _State:
    """The state a journal describes; a line that does not parse ends it (a torn write)."""
    state = _State({})
    seq = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            state.torn = True
            break
        if not isinstance(rec, dict):
            state.torn = True
            break
        state.lines += 1
        if "mark" in rec:
            since = float(rec.get("t", 0.0))
            for source in rec["mark"]:
                seq += 1
                state.marks.setdefault(str(source), _Mark(seq, since))
        elif "done" in rec:
            for source in rec["done"]:
                state.marks.pop(str(source), None)
        elif "full" in rec:
            state.full = bool(rec["full"])
        elif "incarnation" in rec:
            state.incarnation = str(rec["incarnation"])
        elif "error" in rec:
            state.error = rec["error"]
            state.error_since = rec.get("t") if rec["error"] is not None else None
    return state


class SinkQueue:
    """The dirty sources of one sink, persisted beside the store. Thread-safe.

    Build it with ``open``. ``mark`` (the indexing side) and ``take``/``done`` (the sink side)
    may run in different threads.
    """

    def __init__(
        self, path: Path, sink: str, state: _State, clock: Callable[[], float], created: bool
    ) -> None:
        self._path = path
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._marked = threading.Event()
        self._marks = state.marks
        self._seq = max((m.seq for m in state.marks.values()), default=0)
        self._taken: dict[str, int] = {}
        self._full = state.full
        self._incarnation = state.incarnation
        self._error = state.error
        self._error_since = state.error_since
        self._lines = state.lines
        self._fd: int | None = None
        self._broken = False  # an append failed: the next write rewrites the whole file
        self.created = created
        """True when no queue file existed: the sink is new to this store."""

    @classmethod
    def open(cls, path: Path, *, sink: str = "", clock: Callable[[], float] = time.time) -> SinkQueue:
        """Open (or create) the queue at ``path``; ``clock`` gives wall-clock seconds.

        A new queue starts with ``full_sync_needed`` set, so a sink added to a daemon with
        an existing store receives all of it. Raises SinkError when the file cannot be read
        or written.
        """
        path = Path(path)
        sink = sink or path.name
        remove_stale_temps(path)
        try:
            data = path.read_bytes()
            created = False
        except FileNotFoundError:
            data, created = b"", True
        except OSError as exc:
            raise SinkError(sink, f"cannot read the queue {path}: {exc.strerror or exc}") from exc
        state = _replay(data)
        if state.torn:
            log.warning(
                "sink_queue_torn", sink=sink, path=str(path), detail="ignoring an incomplete last line"
            )
        if created:
            state.full = True
        queue = cls(path, sink, state, clock, created)
        try:
            if created or state.torn:
                queue._rewrite()
            else:
                queue._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            queue.close()
            raise SinkError(sink, f"cannot write the queue {path}: {exc.strerror or exc}") from exc
        return queue

    @staticmethod
    def read_lag(path: Path, *, now: float | None = None) -> QueueLag | None:
        """The lag a queue file records, read-only (``embedd status``); None when there is no file."""
        try:
            state = _replay(Path(path).read_bytes())
        except FileNotFoundError:
            return None
        return _lag(
            state.marks, state.full, state.error, state.error_since, time.time() if now is None else now
        )

    # ----- the indexing side -----

    def mark(self, sources: Iterable[str]) -> None:
        """Record that ``sources`` changed in the store (or left it); durable when this returns.

        Call it before the store change is saved: a crash in between then sends an
        unchanged source once more, instead of never sending a changed one. A failure to
        write is logged, not raised: the marks stay in memory and the next write retries.
        """
        with self._lock:
            now = self._clock()
            fresh = []
            for source in sources:
                self._seq += 1
                mark = self._marks.get(source)
                if mark is None:
                    self._marks[source] = _Mark(self._seq, now)
                    fresh.append(source)
                else:
                    mark.seq = self._seq
            if fresh:
                self._write({"mark": fresh, "t": now}, sync=True)
        self._marked.set()

    def set_full_sync_needed(self, needed: bool) -> None:
        """Record whether the whole store must be (re)loaded into the sink."""
        with self._lock:
            if self._full != needed:
                self._full = needed
                self._write({"full": needed}, sync=True)
        if needed:
            self._marked.set()

    @property
    def incarnation(self) -> str | None:
        """The ``Sink.incarnation`` of the collection the sink wrote into; None: not known yet."""
        with self._lock:
            return self._incarnation

    def set_incarnation(self, incarnation: str) -> None:
        """Record which collection the sink now writes into (durably: a restart compares with it)."""
        with self._lock:
            if self._incarnation != incarnation:
                self._incarnation = incarnation
                self._write({"incarnation": incarnation}, sync=True)

    # ----- the sink side -----

    @property
    def full_sync_needed(self) -> bool:
        """True until the whole store has been loaded into the sink once."""
        with self._lock:
            return self._full

    def take(self, limit: int | None = None) -> list[str]:
        """Up to ``limit`` pending sources, oldest first; they stay pending until ``done``."""
        with self._lock:
            out: list[str] = []
            for source, mark in self._marks.items():
                if limit is not None and len(out) >= limit:
                    break
                self._taken[source] = mark.seq
                out.append(source)
            return out

    def done(self, sources: Iterable[str]) -> None:
        """The sink now has ``sources`` as they were at ``take``; one marked since stays pending."""
        with self._lock:
            gone = []
            for source in sources:
                seq = self._taken.pop(source, None)
                mark = self._marks.get(source)
                if mark is not None and mark.seq == seq:
                    del self._marks[source]
                    gone.append(source)
            if gone:
                self._write({"done": gone}, sync=False)

    def defer(self, sources: Iterable[str]) -> None:
        """Move ``sources`` to the back, so one the sink keeps refusing does not hold up the rest."""
        with self._lock:
            for source in sources:
                self._taken.pop(source, None)
                mark = self._marks.pop(source, None)
                if mark is not None:
                    self._marks[source] = mark

    def note_error(self, reason: str | None) -> None:
        """Record the sink's last failure (None: it works again) for ``embedd status``."""
        with self._lock:
            if reason == self._error:
                return
            if reason is None:
                self._error_since = None
            elif self._error is None:
                self._error_since = self._clock()
            self._error = reason
            self._write({"error": reason, "t": self._error_since}, sync=False)

    def pending(self) -> int:
        """How many sources the sink lacks."""
        with self._lock:
            return len(self._marks)

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the oldest pending source was marked; None when none is pending."""
        return self.lag(now).oldest_age_s

    def lag(self, now: float | None = None) -> QueueLag:
        """Pending sources, the age of the oldest, and the last error."""
        with self._lock:
            now = self._clock() if now is None else now
            return _lag(self._marks, self._full, self._error, self._error_since, now)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a ``mark``; True when one came."""
        came = self._marked.wait(timeout)
        self._marked.clear()
        return came

    def close(self) -> None:
        """Close the file; the queue keeps its state on disk. Idempotent."""
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    # ----- the file -----

    def _write(self, record: dict[str, object], *, sync: bool) -> None:
        """Append one record, or rewrite the file when the journal is long or broken."""
        try:
            if self._broken or self._lines >= max(COMPACT_MIN_LINES, 2 * len(self._marks) + 64):
                self._rewrite()
                return
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            line = orjson.dumps(record) + b"\n"
            if os.write(self._fd, line) != len(line):
                raise OSError("short write")
            self._lines += 1
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            # The state is right in memory; the next write rewrites the file from it.
            self._broken = True
            log.error("sink_queue_write_failed", sink=self._sink, path=str(self._path), reason=str(exc))

    def _rewrite(self) -> None:
        lines = [orjson.dumps({"v": VERSION})]
        if self._full:
            lines.append(orjson.dumps({"full": True}))
        if self._incarnation is not None:
            lines.append(orjson.dumps({"incarnation": self._incarnation}))
        if self._error is not None:
            lines.append(orjson.dumps({"error": self._error, "t": self._error_since}))
        group: list[str] = []
        since = math.nan
        for source, mark in self._marks.items():
            if group and mark.since != since:
                lines.append(orjson.dumps({"mark": group, "t": since}))
                group = []
            group.append(source)
            since = mark.since
        if group:
            lines.append(orjson.dumps({"mark": group, "t": since}))
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with AtomicWriter(self._path) as w:
            w.write(b"\n".join(lines) + b"\n")
            w.commit()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._lines = len(lines)
        self._broken = False


def _lag(marks: dict[str, _Mark], full: bool, error: str | None, since: float | None, now: float) -> QueueLag:
    oldest = min((m.since for m in marks.values()), default=None)
    return QueueLag(
        pending=len(marks),
        oldest_age_s=None if oldest is None else max(0.0, now - oldest),
        full_sync=full,
        error=error,
        error_since=since,
    )
