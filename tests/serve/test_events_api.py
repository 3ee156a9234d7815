"""``GET /v1/events`` on the in-process server: a client that never reads is dropped while the
feed goes on, and a reader left behind sees the gap in the ids."""

from __future__ import annotations

import json
import socket

import pytest
import structlog.testing
from api_support import Api
from support import wait_for

from daemon.serve import events as feed


def test_a_client_that_never_reads_is_dropped_and_a_late_reader_sees_the_gap(
    ready: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "SEND_TIMEOUT_S", 0.5)
    log = ready.backend.events
    start = log.last_id
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(str(ready.socket))
    stuck.sendall(b"GET /v1/events HTTP/1.1\r\nHost: embedd\r\nAccept: text/event-stream\r\n\r\n")
    try:
        big = "x" * 10_000  # far more than the socket buffers hold, as the worker goes on

        def dropped() -> bool:
            for _ in range(100):
                log("file_indexed", {"source": big})
            return any(e["event"] == "events_client_dropped" for e in logs)

        with structlog.testing.capture_logs() as logs:
            wait_for(dropped, what="the server to drop the client that never read")
        # The worker goes on until the log has wrapped past what the client was sent.
        for _ in range(log.capacity + 1):
            log("file_indexed", {"source": big})
        # What was buffered before it gave up is there, then the end of the connection.
        stuck.settimeout(60)
        while stuck.recv(1 << 20):
            pass
    finally:
        stuck.close()
    # A long poll from an id long gone hears how many it missed, and the ids jump by as much.
    with ready.client() as c:
        doc = c.get("/v1/events", params={"since": start, "timeout": 0, "limit": 1}).json()
    assert doc["missed"] == doc["events"][0]["id"] - start - 1 > 0
    assert doc["last_id"] == log.last_id
    assert json.dumps(doc["events"][0]["data"]).count("x") == 10_000


def test_a_stream_resumed_from_an_id_long_gone_says_what_it_missed_first(ready: Api) -> None:
    log = ready.backend.events
    start = log.last_id
    for i in range(log.capacity + 5):
        log("file_renamed", {"source": f"a{i}.txt", "to": f"b{i}.txt"})
    with (
        ready.client(timeout=60) as c,
        c.stream(
            "GET", "/v1/events", headers={"Accept": "text/event-stream", "Last-Event-ID": str(start)}
        ) as resp,
    ):
        data = (json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: "))
        gap = next(data)
        assert gap == {"type": "events_missed", "data": {"missed": 5, "after": start}}
        first = next(data)
        assert first["id"] == start + gap["data"]["missed"] + 1
        assert first["data"] == {"source": "a5.txt", "to": "b5.txt"}
