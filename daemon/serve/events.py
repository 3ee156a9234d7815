"""``GET /v1/events``: the events feed as Server-Sent Events, or as a JSON long poll.

- With ``Accept: text/event-stream`` (what ``EventSource`` sends), or without ``timeout``: an
  SSE stream. Each event is one ``message`` whose ``id:`` is the event's id and whose data is
  ``{"id", "time", "type", "data"}``; a client resumes with ``Last-Event-ID`` or ``?since=<id>``
  (without either it starts with the next event). When events after the client's id were
  already dropped, the stream first sends ``{"type": "events_missed", "data": {"missed": n,
  "after": since}}`` (no ``id:``): the ids jump by as much.
- With ``?timeout=<s>`` (up to 60): a long poll, as Syncthing's: it answers JSON
  ``{"events": [...], "last_id", "missed"}`` as soon as there is an event after ``since``
  (default 0, everything kept), or with no events once ``timeout`` has passed.

The stream reads the shared buffer by id, so a client costs its cursor and one batch; a
client whose socket takes no data for ``SEND_TIMEOUT_S`` is dropped; a comment line every
``KEEPALIVE_S`` keeps proxies from closing an idle stream; the stream ends within
``STOP_POLL_S`` once the daemon is stopping, so a graceful shutdown never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
import structlog
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from daemon.service.events import EventLog

log = structlog.get_logger("embedd")

BATCH = 100
MAX_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0
STOP_POLL_S = 0.5


class BadQuery(ValueError):
    """A query parameter that is not what the feed accepts (answered 400 by the app)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadQuery(name, f"{name} must be a non-negative integer (an event id)")
    return int(raw)


def wants_poll(request: Request) -> bool:
    """A long poll (JSON) rather than a stream."""
    accept = request.headers.get("accept", "")
    return "timeout" in request.query_params and "text/event-stream" not in accept


async def long_poll(request: Request, log: EventLog, stopping: Callable[[], bool]) -> dict[str, object]:
    """The JSON answer of ``GET /v1/events?since=&timeout=``."""
    since = _int_param(request, "since") or 0
    raw = request.query_params.get("timeout", "0")
    try:
        timeout = float(raw)
    except ValueError:
        raise BadQuery("timeout", "timeout must be a number of seconds") from None
    if not 0 <= timeout <= MAX_TIMEOUT_S:
        raise BadQuery("timeout", f"timeout must be from 0 to {MAX_TIMEOUT_S:.0f} seconds")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    limit = min(_int_param(request, "limit") or BATCH, 1000)
    while True:
        page = log.after(since, limit)
        left = deadline - loop.time()
        if page.events or page.missed or left <= 0 or stopping():
            return {
                "events": [e.to_json() for e in page.events],
                "last_id": page.last_id,
                "missed": page.missed,
            }
        await log.wait(since, min(left, STOP_POLL_S))


class EventStream:
    """An ASGI response streaming the feed from ``since`` (None: from the next event)."""

    def __init__(self, log: EventLog, since: int | None, stopping: Callable[[], bool]) -> None:
        self._log = log
        self._since = since
        self._stopping = stopping

    @staticmethod
    def since_of(request: Request) -> int | None:
        """Where a stream resumes: ``Last-Event-ID`` first, then ``?since=``."""
        header = request.headers.get("last-event-id")
        if header is not None and header.strip().isdigit():
            return int(header.strip())
        return _int_param(request, "since")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await self._stream(send, gone)
        except TimeoutError:
            # Returning without ending the response makes uvicorn close the connection.
            if not self._stopping():
                log.info("events_client_dropped", reason=f"it took no data for {SEND_TIMEOUT_S:.0f} s")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _send(self, send: Send, body: bytes, *, more: bool = True) -> None:
        await self._deliver(send, {"type": "http.response.body", "body": body, "more_body": more})

    async def _deliver(self, send: Send, message: dict[str, object]) -> None:
        """``send``, given up (TimeoutError) after SEND_TIMEOUT_S or once the daemon is stopping.

        uvicorn's send waits while the client's socket is full; a client that reads nothing
        must neither hold its connection forever nor make a stop wait for it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_TIMEOUT_S
        task = asyncio.ensure_future(send(message))
        while True:
            done, _ = await asyncio.wait({task}, timeout=STOP_POLL_S)
            if done:
                task.result()
                return
            if self._stopping() or loop.time() >= deadline:
                task.cancel()
                raise TimeoutError

    async def _stream(self, send: Send, gone: asyncio.Event) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await self._deliver(send, {"type": "http.response.start", "status": 200, "headers": headers})
        since = self._log.last_id if self._since is None else self._since
        await self._send(send, b"retry: 2000\n\n")
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not gone.is_set() and not self._stopping():
            page = self._log.after(since, BATCH)
            out = bytearray()
            if page.missed:
                gap = {"type": "events_missed", "data": {"missed": page.missed, "after": since}}
                out += b"data: " + orjson.dumps(gap) + b"\n\n"
            for event in page.events:
                out += b"id: %d\ndata: %s\n\n" % (event.id, orjson.dumps(event.to_json()))
            if page.events:
                since = page.events[-1].id
            elif page.missed or since > page.last_id:
                since = page.last_id
            if not out and loop.time() - quiet_since >= KEEPALIVE_S:
                out += b": keepalive\n\n"
            if out:
                await self._send(send, bytes(out))
                quiet_since = loop.time()
                continue
            await self._log.wait(since, STOP_POLL_S)
        with contextlib.suppress(TimeoutError, OSError):
            await self._send(send, b"", more=False)
