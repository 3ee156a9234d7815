"""What the worker reports about its work: a ``throughput`` event a minute, and the progress
of a bulk index (many files queued at once by a scan)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.service.notices import Notices
from daemon.service.progress import Progress

log = structlog.get_logger("embedd")

THROUGHPUT_EVERY_S = 60.0
BULK_PROGRESS_MIN_FILES = 5


@dataclass
class Counters:
    """Work done since the last throughput report."""

    files: int = 0
    chunks: int = 0
    embedded: int = 0
    tokens: int = 0


class Throughput:
    """Counts indexed files, chunks and tokens, and logs rates at most once per interval."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._since = clock()
        self.counters = Counters()

    def add(self, *, chunks: int, embedded: int, tokens: int) -> None:
        """One file was indexed."""
        c = self.counters
        c.files += 1
        c.chunks += chunks
        c.embedded += embedded
        c.tokens += tokens

    def report(self, queue_depth: int, *, force: bool = False) -> None:
        """Log a ``throughput`` event when the interval is over (or ``force``) and work was done."""
        elapsed = self._clock() - self._since
        if not force and elapsed < THROUGHPUT_EVERY_S:
            return
        c = self.counters
        if c.files:
            secs = max(elapsed, 1e-9)
            log.info(
                "throughput",
                files=c.files,
                chunks=c.chunks,
                embedded=c.embedded,
                seconds=round(elapsed, 1),
                files_per_s=round(c.files / secs, 2),
                chunks_per_s=round(c.chunks / secs, 1),
                tokens_per_s=round(c.tokens / secs, 1),
                queue_depth=queue_depth,
            )
        self.counters = Counters()
        self._since = self._clock()


class BulkProgress:
    """A progress bar (or ``progress`` events) while a scan's worth of files is being indexed.

    The bulk is a set of paths: a rescan that queues a file already in it adds nothing (the
    debouncer holds one event per path), and the bulk ends when its last path is done.
    """

    def __init__(self, notices: Notices | None = None) -> None:
        self._bar: Progress | None = None
        self._paths: set[Path] = set()
        self._notices = notices or Notices()

    @property
    def active(self) -> bool:
        """True while a bulk index runs."""
        return self._bar is not None

    @property
    def left(self) -> int:
        """Files of the bulk index not done yet."""
        return len(self._paths) if self._bar is not None else 0

    @property
    def total(self) -> int:
        """Files of the bulk index, done or not."""
        return self._bar.total if self._bar is not None else 0

    def start(self, paths: Iterable[Path]) -> None:
        """A scan queued ``paths``; those not in the bulk yet join it (a few alone make none)."""
        fresh = set(paths) - self._paths
        if not fresh or (self._bar is None and len(fresh) < BULK_PROGRESS_MIN_FILES):
            return
        if self._bar is None:
            self._bar = Progress("indexing", 0, unit="files")
        self._paths |= fresh
        self._bar.total += len(fresh)
        log.info("bulk_index_queued", files=len(fresh), total=self._bar.total, left=len(self._paths))
        self._notices.notify("bulk_queued", files=len(fresh), total=self._bar.total, left=len(self._paths))

    def done(self, *paths: Path) -> bool:
        """These paths were handled (indexed, skipped, failed or gone); True when that ended the bulk."""
        if self._bar is None:
            return False
        finished = [p for p in paths if p in self._paths]
        if not finished:
            return False
        self._paths.difference_update(finished)
        self._bar.advance(len(finished))
        left = len(self._paths)
        self._notices.notify("bulk_progress", done=self._bar.total - left, total=self._bar.total, left=left)
        if not left:
            self.close()
            return True
        return False

    def close(self) -> None:
        """End the progress output (at the end, or when the daemon stops)."""
        if self._bar is not None:
            self._notices.notify("bulk_done", total=self._bar.total)
            self._bar.close()
            self._bar = None
            self._paths.clear()
