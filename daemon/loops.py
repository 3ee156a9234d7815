"""What the daemon's long-running loops share: how they are told to stop, and when they retry.

The worker (``daemon.service``) and each sink's thread (``daemon.sinks.sync``) both run until a
flag is set and both retry what failed (a store save, a sink's batch) on a schedule; the
protocol and the schedule live here once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol


class StopFlag(Protocol):
    """Anything with ``is_set()``: a threading.Event, for instance."""

    def is_set(self) -> bool: ...


class Backoff:
    """When to try a failing operation again; pure, with an injected clock.

    The delays double from ``base`` up to ``cap``, or follow ``steps`` (the last repeating)
    when given. ``jitter`` (0 to 1) draws each delay up to that fraction shorter, so several
    daemons that failed together (one shared vector collection going down) do not all retry at
    the same instant. A success resets the schedule.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        steps: Sequence[float] = (),
        jitter: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be from 0 to 1, not {jitter}")
        self._clock = clock
        self.base = base
        self.cap = cap
        self._steps = tuple(steps)
        self._jitter = jitter
        self._rng = rng
        self.failures = 0
        self.next_attempt_at = -math.inf

    def ready(self) -> bool:
        """True when an attempt may be made now."""
        return self._clock() >= self.next_attempt_at

    def wait_s(self) -> float:
        """Seconds until the next attempt may be made (0 when it may now)."""
        return max(0.0, self.next_attempt_at - self._clock())

    def failed(self) -> float:
        """Record a failed attempt; returns the delay before the next one."""
        if self._steps:
            delay = self._steps[min(self.failures, len(self._steps) - 1)]
        else:
            delay = min(self.cap, self.base * 2.0 ** min(self.failures, 62))
        if self._jitter:
            delay *= 1.0 - self._jitter * self._rng()
        self.failures += 1
        self.next_attempt_at = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        """Record a successful attempt: the next may be made at once, and delays start over."""
        self.failures = 0
        self.next_attempt_at = -math.inf
