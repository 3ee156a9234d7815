"""Progress of long jobs: a bar on a terminal, ``progress`` events in JSON logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import structlog

from daemon import log as logsetup

Clock = Callable[[], float]

# Below this, an elapsed time says nothing about a rate.
MIN_ELAPSED_S = 0.01


class Progress:
    """Reports ``done`` out of ``total`` units of a task, at most every ``interval_s``."""

    def __init__(
        self,
        task: str,
        total: int,
        *,
        unit: str = "items",
        interval_s: float = 1.0,
        stream: TextIO | None = None,
        bar: bool | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.task = task
        self.total = max(0, total)
        self.unit = unit
        self.done = 0
        self._interval = interval_s
        self._stream = stream if stream is not None else sys.stderr
        self._bar = logsetup.is_console() and self._stream.isatty() if bar is None else bar
        self._clock = clock
        self._start = clock()
        self._last = float("-inf")
        self._log = structlog.get_logger("embedd.progress")
        self._closed = False

    def rate(self) -> float:
        """Units per second since the start; 0 until a measurable time has passed (never a rate
        made up from a few microseconds)."""
        elapsed = self._clock() - self._start
        return self.done / elapsed if elapsed >= MIN_ELAPSED_S else 0.0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done and report if the interval has passed."""
        self.done += n
        now = self._clock()
        if now - self._last >= self._interval or self.done >= self.total:
            self._last = now
            self._report(final=False)

    def _report(self, *, final: bool) -> None:
        rate = self.rate()
        if self._bar:
            self._draw(rate, final)
            return
        remaining = (self.total - self.done) / rate if rate > 0 and self.total else None
        self._log.info(
            "progress",
            task=self.task,
            done=self.done,
            total=self.total,
            unit=self.unit,
            rate=round(rate, 1),
            eta_s=None if remaining is None else round(remaining, 1),
            final=final,
        )

    def _draw(self, rate: float, final: bool) -> None:
        width = 30
        frac = self.done / self.total if self.total else 1.0
        filled = int(width * min(frac, 1.0))
        eta = ""
        if rate > 0 and self.total and not final:
            eta = f" ETA {(self.total - self.done) / rate:.0f}s"
        line = (
            f"\r{self.task} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total} {self.unit} ({frac:.0%}) {rate:.1f} {self.unit}/s{eta}"
        )
        self._stream.write(line + ("\n" if final else ""))
        self._stream.flush()

    def close(self) -> None:
        """Final report (a newline after the bar)."""
        if not self._closed:
            self._closed = True
            self._report(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stepped:
    """A ``(done, total)`` callback (what ``daemon.store`` reports through) drawn as a ``Progress``."""

    def __init__(self, task: str, *, unit: str = "items") -> None:
        self._task = task
        self._unit = unit
        self._progress: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            self._progress = Progress(self._task, total, unit=self._unit)
        self._progress.advance(done - self._progress.done)
        if done >= total:
            self._progress.close()
