"""The API's error boundary: a backend that fails answers 500 as JSON, and the server stays up.

A real ApiServer on a real Unix socket, over a backend whose status and snapshot raise the
unexpected (a bug in the daemon, not a bad request)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
from structlog.testing import capture_logs
from support import wait_for

from daemon.config import ServeConfig
from daemon.serve.server import ApiServer


class FailingBackend:
    phase = "ready"
    model = "failing"
    dimension = 4
    query_prefix = ""

    def __init__(self) -> None:
        self.fail = True

    def embed(self, texts: list[str]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        future.set_result(np.ones((len(texts), 4), dtype=np.float32) / 2)
        return future

    def count_tokens(self, text: str) -> int:
        return 1

    def snapshot(self) -> object:
        raise KeyError("the snapshot is broken")

    def status(self) -> dict[str, object]:
        if self.fail:
            raise ValueError("status is broken")
        return {"daemon": {"running": True}}


@pytest.fixture
def served() -> Iterator[tuple[httpx.Client, FailingBackend]]:
    root = Path(tempfile.mkdtemp(prefix="embedd-fail-"))
    backend = FailingBackend()
    stop = threading.Event()
    server = ApiServer(ServeConfig(socket=root / "s.sock"), backend)  # type: ignore[arg-type]
    server.start(stop)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(root / "s.sock")), base_url="http://embedd")
    try:
        yield client, backend
    finally:
        client.close()
        stop.set()
        server.stop()
        for p in root.iterdir():
            p.unlink()
        root.rmdir()


def test_a_failing_status_or_snapshot_answers_500_json_and_the_server_stays_up(
    served: tuple[httpx.Client, FailingBackend],
) -> None:
    client, backend = served
    with capture_logs() as logs:
        status = client.get("/v1/status")
        search = client.post("/v1/search", json={"query": "anything"})
        for answer in (status, search):
            assert answer.status_code == 500
            assert answer.json()["error"]["type"] == "server_error"
        # Logged (with the traceback) once the answer is sent.
        wait_for(
            lambda: [e["event"] for e in logs if e.get("log_level") == "error"] == ["api_internal_error"] * 2,
            what="both failures logged",
        )
    assert client.get("/healthz").status_code == 200
    backend.fail = False
    assert client.get("/v1/status").json() == {"daemon": {"running": True}}
