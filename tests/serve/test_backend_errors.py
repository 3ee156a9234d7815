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
from daemon.errors import BadTextError, EmbedError, EmbedFailedError, TextTooLongError
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


class RefusingBackend(FailingBackend):
    """Embeddings fail with ``error``: raised when queued (``at_submit``) or by the future."""

    def __init__(self, error: Exception, *, at_submit: bool) -> None:
        super().__init__()
        self.error = error
        self.at_submit = at_submit

    def embed(self, texts: list[str]) -> Future[np.ndarray]:
        if self.at_submit:
            raise self.error
        future: Future[np.ndarray] = Future()
        future.set_exception(self.error)
        return future


@pytest.mark.parametrize(
    ("error", "at_submit", "status", "kind"),
    [
        (BadTextError("text 0 is empty or whitespace only"), True, 400, "invalid_request_error"),
        (TextTooLongError(600, 512, 0), True, 422, "invalid_request_error"),
        (EmbedFailedError("llama.cpp could not decode a batch"), False, 500, "server_error"),
        # What embed/native.py raises itself, should it reach the API unwrapped: the model's failure.
        (EmbedError("llama.cpp returned no vector"), False, 500, "server_error"),
        # A model failure is the daemon's wherever it surfaces, not the caller's because it came early.
        (EmbedFailedError("the model is gone"), True, 500, "server_error"),
    ],
)
def test_an_embedding_error_is_answered_by_its_type(
    error: Exception, at_submit: bool, status: int, kind: str
) -> None:
    root = Path(tempfile.mkdtemp(prefix="embedd-refuse-"))
    backend = RefusingBackend(error, at_submit=at_submit)
    server = ApiServer(ServeConfig(socket=root / "s.sock"), backend)  # type: ignore[arg-type]
    server.start()
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(root / "s.sock")), base_url="http://e") as c:
            for path, body in (
                ("/v1/embeddings", {"input": "x"}),
                ("/v1/search", {"query": "x", "mode": "vector"}),
            ):
                answer = c.post(path, json=body)
                assert answer.status_code == status, (path, answer.text)
                assert answer.json()["error"]["type"] == kind
                said = answer.json()["error"]["message"]
                assert ("600 tokens" if status == 422 else str(error)) in said, said
            assert c.get("/healthz").status_code == 200
    finally:
        server.stop()
        for p in root.iterdir():
            p.unlink()
        root.rmdir()
