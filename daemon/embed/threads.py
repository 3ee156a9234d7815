"""How many threads llama.cpp runs on: a fixed number, or one that follows the CPU really free.

llama.cpp's threads meet at a barrier after every op of the graph, so a batch goes at the pace
of its slowest thread. When another process takes one of the cores, the thread sharing it
falls behind and the others wait: with two cores, two threads can then be slower than one.
``AdaptiveThreads`` measures what each native batch achieves (tokens per second, so batches of
any size compare) and tries the neighbouring thread count now and then; the embedder changes the
live context's thread count between two batches (``llama_set_n_threads``; no reload).

The rules, all cheap and local:

- Batches under ``min_tokens`` (a search query, the tail of a call) run on one thread and are
  not measured: they are mostly call overhead, which a second thread only adds to.
- The last ``window`` measured batches (median) are the current rate; a trial of a neighbouring
  count runs for ``window`` batches and is compared with the rate just before it.
- The lower count wins unless the higher one is faster by at least ``gain`` of one thread's
  share (``rate(c + 1) >= rate(c) * (1 + gain / c)``): an extra thread that buys little is
  better left to the other work on the machine. ``gain`` is 0.1: at 0.25 a 2-vCPU EPYC whose
  second thread bought 10 to 25% settled on one thread on an idle machine (0.8x the speed of
  two), and the daemon's threads run at nice 10 anyway, so interactive work still comes first.
- A trial of one thread fewer starts as soon as the rate falls by ``drop`` below the best seen
  at the current count (other load appeared); a trial of one more starts as soon as the
  machine shows a free core while we run (load left), and otherwise both directions are
  probed every ``probe_s`` seconds, the interval doubling (up to ``probe_max_s``) while probes
  keep failing, so a steady state costs almost nothing.
- After a successful step the next one in the same direction is tried at once.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger("embedd")

Clock = Callable[[], float]
IdleMeter = Callable[[], "CpuTimes | None"]


class ThreadPolicy(Protocol):
    """Tells the embedder how many threads the next native batch runs on, and learns from it."""

    @property
    def threads(self) -> int:
        """The thread count batches run on now."""
        ...

    @property
    def adaptive(self) -> bool:
        """Whether the count follows the load."""
        ...

    def before_batch(self, tokens: int) -> int:
        """The thread count for the batch of ``tokens`` tokens about to run."""
        ...

    def after_batch(self, tokens: int, seconds: float) -> None:
        """That batch held ``tokens`` tokens and took ``seconds``."""
        ...

    @property
    def changes(self) -> int:
        """How often the count changed so far."""
        ...


class FixedThreads:
    """``[model] threads = N``: always N."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._threads = threads

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def adaptive(self) -> bool:
        return False

    def before_batch(self, tokens: int) -> int:
        return self._threads

    def after_batch(self, tokens: int, seconds: float) -> None:
        return None

    @property
    def changes(self) -> int:
        return 0


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative time of a set of CPUs, in clock ticks: idle (and I/O wait) and all."""

    idle: int
    total: int
    cpus: int

    def idle_cpus_since(self, earlier: CpuTimes) -> float | None:
        """How many of the CPUs sat idle, on average, between ``earlier`` and now."""
        total = self.total - earlier.total
        if total <= 0 or self.cpus != earlier.cpus:
            return None
        return max(0.0, (self.idle - earlier.idle) / total * self.cpus)


def read_cpu_times(stat: Path = Path("/proc/stat"), cpus: frozenset[int] | None = None) -> CpuTimes | None:
    """The idle and total ticks of the CPUs this process may run on, from /proc/stat.

    None where there is no /proc/stat (not Linux) or it cannot be read.
    """
    allowed = cpus if cpus is not None else frozenset(os.sched_getaffinity(0))
    try:
        text = stat.read_text()
    except OSError:
        return None
    idle = total = seen = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if int(name[3:]) not in allowed:
            continue
        # user nice system idle iowait irq softirq steal; guest time is already inside user.
        fields = [int(v) for v in rest.split()[:8]]
        if len(fields) < 5:
            return None
        idle += fields[3] + fields[4]
        total += sum(fields)
        seen += 1
    return CpuTimes(idle, total, seen) if seen else None


@dataclass
class _Trial:
    threads: int
    incumbent_rate: float
    reason: str
    samples: list[float]


class AdaptiveThreads:
    """``[model] threads = 0``: between 1 and ``max_threads``, following the measured rate.

    Not thread-safe: the embedder calls it under the lock that serialises its native calls,
    whatever thread that is.
    """

    def __init__(
        self,
        max_threads: int,
        *,
        min_tokens: int = 128,
        window: int = 3,
        drop: float = 0.25,
        gain: float = 0.1,
        probe_s: float = 10.0,
        probe_max_s: float = 160.0,
        stale_s: float = 30.0,
        log_every_s: float = 60.0,
        clock: Clock = time.monotonic,
        cpu_times: IdleMeter | None = read_cpu_times,
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self.max_threads = max_threads
        self.min_tokens = min_tokens
        self.window = window
        self.drop = drop
        self.gain = gain
        self.probe_s = probe_s
        self.probe_max_s = probe_max_s
        self.stale_s = stale_s
        self.log_every_s = log_every_s
        self._clock = clock
        self._cpu_times = cpu_times
        self._current = max_threads
        self._rates: deque[float] = deque(maxlen=window)
        self._idle: deque[float] = deque(maxlen=window)
        self._best: float | None = None  # best windowed rate at the current count
        self._trial: _Trial | None = None
        # When each direction was last probed, and how long to wait before the next periodic
        # probe. A probe downwards is due at once: the daemon may have started on a busy machine.
        self._last_probe = {-1: float("-inf"), +1: clock()}
        self._interval = {-1: probe_s, +1: probe_s}
        self._last_sample: float | None = None
        self._last_logged = float("-inf")
        self._before: CpuTimes | None = None
        self._changes = 0

    @property
    def threads(self) -> int:
        return self._current

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def changes(self) -> int:
        return self._changes

    @property
    def trial_threads(self) -> int | None:
        """The count under trial, if a trial runs."""
        return self._trial.threads if self._trial is not None else None

    def before_batch(self, tokens: int) -> int:
        if tokens < self.min_tokens:
            # A search query: mostly fixed cost, where the threads' meeting after every op
            # (a futex wake with passive waiting) costs more than a second thread saves
            # (10.9 ms on two threads, 5.9 ms on one, on the 2-vCPU EPYC). Not measured.
            self._before = None
            return 1
        if self._cpu_times is not None:
            self._before = self._cpu_times()
        return self._trial.threads if self._trial is not None else self._current

    def after_batch(self, tokens: int, seconds: float) -> None:
        idle = self._idle_since_before()
        if tokens < self.min_tokens or seconds <= 0 or self.max_threads == 1:
            return
        now = self._clock()
        if self._last_sample is not None and now - self._last_sample > self.stale_s:
            # Nothing measured for a while: what we knew about the load is stale.
            self._forget()
        self._last_sample = now
        rate = tokens / seconds
        if self._trial is not None:
            self._trial.samples.append(rate)
            if len(self._trial.samples) >= self.window:
                self._decide(now)
            return
        self._rates.append(rate)
        if idle is not None:
            self._idle.append(idle)
        if len(self._rates) == self.window:
            self._check(now)

    def _idle_since_before(self) -> float | None:
        if self._cpu_times is None or self._before is None:
            return None
        after = self._cpu_times()
        before, self._before = self._before, None
        return after.idle_cpus_since(before) if after is not None else None

    def _forget(self) -> None:
        self._trial = None
        self._rates.clear()
        self._idle.clear()
        self._best = None

    def _check(self, now: float) -> None:
        rate = statistics.median(self._rates)
        if self._best is None:
            self._best = rate
        c = self._current
        free = statistics.fmean(self._idle) if len(self._idle) == self.window else 0.0
        if c > 1 and rate < self._best * (1 - self.drop):
            self._start(c - 1, rate, f"rate fell to {rate:.0f} tokens/s from {self._best:.0f}")
        elif c < self.max_threads and free >= 0.5 and now >= self._last_probe[+1] + self.probe_s:
            # A core sat idle while we ran: the load that pushed us down may have left.
            self._start(c + 1, rate, f"{free:.1f} CPUs idle")
        elif c < self.max_threads and now >= self._last_probe[+1] + self._interval[+1]:
            self._start(c + 1, rate, "periodic probe")
        elif c > 1 and now >= self._last_probe[-1] + self._interval[-1]:
            self._start(c - 1, rate, "periodic probe")
        else:
            self._best = max(self._best, rate)

    def _start(self, threads: int, incumbent_rate: float, reason: str) -> None:
        self._trial = _Trial(threads, incumbent_rate, reason, [])
        log.debug("embed_threads_trial", threads=self._current, trying=threads, reason=reason)

    def _decide(self, now: float) -> None:
        trial = self._trial
        assert trial is not None
        self._trial = None
        c, t = self._current, trial.threads
        trial_rate = statistics.median(trial.samples)
        rates = {c: trial.incumbent_rate, t: trial_rate}
        lower, higher = min(c, t), max(c, t)
        winner = higher if rates[higher] >= rates[lower] * (1 + self.gain / lower) else lower
        direction = +1 if t > c else -1
        self._rates.clear()
        self._idle.clear()
        if winner == t:
            self._current = t
            self._changes += 1
            self._rates.extend(trial.samples[-self.window :])
            self._best = trial_rate
            # Conditions are moving: probe both ways at the base interval again.
            for d in (-1, +1):
                self._interval[d] = self.probe_s
                self._last_probe[d] = now
            # On a machine whose load comes and goes the count may move every few seconds:
            # one info line a minute at most, the rest at debug.
            emit = log.debug
            if now - self._last_logged >= self.log_every_s:
                emit, self._last_logged = log.info, now
            emit(
                "embed_threads_changed",
                threads=t,
                previous=c,
                tokens_per_s=round(trial_rate),
                previous_tokens_per_s=round(trial.incumbent_rate),
                reason=trial.reason,
            )
            beyond = t + direction
            if 1 <= beyond <= self.max_threads:
                self._start(beyond, trial_rate, f"{t} threads helped; trying {beyond}")
            return
        log.debug(
            "embed_threads_kept",
            threads=c,
            tokens_per_s=round(trial.incumbent_rate),
            tried=t,
            tried_tokens_per_s=round(trial_rate),
        )
        self._best = trial.incumbent_rate
        self._interval[direction] = min(self._interval[direction] * 2, self.probe_max_s)
        self._last_probe[direction] = now
