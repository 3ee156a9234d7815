"""The events feed: the worker's notices as numbered events, the last ``capacity`` of them kept.

``EventLog`` listens to the notices (``service/notices.py``) and keeps them in one shared ring
buffer with increasing ids (1, 2, ...; they restart with the daemon) and a timestamp. Clients
(``GET /v1/events``, ``serve/events.py``) read from that buffer by id: none of them owns a queue,
so a client's memory is its cursor, and ``notify`` never waits for a client: it appends under a
lock and wakes the waiting clients with ``call_soon_threadsafe`` into their event loop. A client
that falls more than ``capacity`` events behind sees a gap: the ids jump, and ``Page.missed``
says how many it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

CAPACITY = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One notice as the feed hands it out."""

    id: int
    time: float  # wall clock, seconds since the epoch
    type: str
    data: Mapping[str, object]

    def to_json(self) -> dict[str, object]:
        stamp = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return {
            "id": self.id,
            "time": stamp.replace("+00:00", "Z"),
            "type": self.type,
            "data": dict(self.data),
        }


@dataclass(frozen=True, slots=True)
class Page:
    """What a client reads after the id it last saw."""

    events: tuple[Event, ...]
    last_id: int  # the newest id the feed has given out (0: none yet)
    missed: int  # events after ``since`` already dropped from the buffer (a gap before ``events``)


class EventLog:
    """The last ``capacity`` events; call it as a notices listener, read it with ``after``."""

    def __init__(self, capacity: int = CAPACITY, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last = 0
        self._clock = clock
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def capacity(self) -> int:
        return self._ring.maxlen or 0

    @property
    def last_id(self) -> int:
        return self._last

    def __call__(self, kind: str, fields: Mapping[str, object]) -> None:
        """A notice (``Notices.listen``): append it and wake the waiting clients; never blocks on them."""
        with self._lock:
            self._last += 1
            self._ring.append(Event(self._last, self._clock(), kind, dict(fields)))
            waiters = list(self._waiters)
        for loop, woken in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(woken.set)

    def after(self, since: int, limit: int | None = None) -> Page:
        """Events with an id above ``since`` (at most ``limit``, the oldest first).

        A ``since`` above the last id (a client that saw a previous run of the daemon) reads
        from the start of the buffer.
        """
        with self._lock:
            last = self._last
            if since > last:
                since = 0
            oldest = self._ring[0].id if self._ring else last + 1
            missed = max(0, oldest - since - 1)
            skip = max(0, since - oldest + 1)
            count = len(self._ring) - skip
            if limit is not None:
                count = min(count, limit)
            events = tuple(self._ring[skip + i] for i in range(max(0, count)))
        return Page(events, last, missed)

    async def wait(self, since: int, timeout: float) -> None:
        """Return once an event above ``since`` exists, or after ``timeout`` seconds."""
        woken = asyncio.Event()
        waiter = (asyncio.get_running_loop(), woken)
        with self._lock:
            if self._last > since:
                return
            self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout)
        finally:
            with self._lock:
                self._waiters.discard(waiter)
