"""The API through real HTTP on a real Unix socket and loopback TCP, with the real model.

Every error status from real requests, a client hanging up mid-request, 200 concurrent
connections and a slowloris client; the daemon keeps answering after each.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_support import TOKEN, Api
from structlog.testing import capture_logs

from daemon.config import ServeConfig
from daemon.embed.scheduler import Scheduler
from daemon.serve.backend import DaemonBackend
from daemon.serve.server import ApiServer
from daemon.store.snapshot import Published

LONG = "word " * 600  # about 600 tokens: over the model's 512


def error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def search_ok(client: httpx.Client) -> None:
    r = client.post("/v1/search", json={"query": "harbour survey", "k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["source"] == "inbox/harbour.txt"


def test_search_and_embeddings_on_the_socket_and_tcp(ready: Api) -> None:
    with ready.client() as c, ready.tcp_client() as t:
        for client in (c, t):
            r = client.post("/v1/search", json={"query": "when does the harbour survey start", "k": 3})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert [h["rank"] for h in doc["results"]] == [1, 2, 3]
            assert doc["results"][0]["content"].startswith("Meeting notes: the harbour survey")
            assert doc["model"] == "all-MiniLM-L6-v2" and doc["searched"] == 4
            assert set(doc["results"][0]) >= {
                "id",
                "score",
                "source",
                "page",
                "chunk",
                "content",
                "timestamp",
            }
        only = c.post("/v1/search", json={"query": "bread", "k": 5, "source_prefix": "inbox/t"}).json()
        assert {h["source"] for h in only["results"]} == {"inbox/trams.txt"}
        strict = c.post("/v1/search", json={"query": "harbour survey boots", "k": 5, "min_score": 0.5}).json()
        assert 1 <= len(strict["results"]) < 4 and all(h["score"] >= 0.5 for h in strict["results"])
        text = "A sourdough loaf needs a long, cool rise: twelve hours in the fridge is typical."
        stored = ready.store.source_entries("inbox/bread.md")[0].vector
        floats = c.post("/v1/embeddings", json={"input": text, "model": "x"}).json()
        b64 = c.post("/v1/embeddings", json={"input": [text, "hi"], "encoding_format": "base64"}).json()
        assert floats["model"] == "all-MiniLM-L6-v2" and floats["usage"]["prompt_tokens"] > 10
        v1 = np.array(floats["data"][0]["embedding"], dtype=np.float32)
        v2 = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
        assert [d["index"] for d in b64["data"]] == [0, 1]
        assert float(v1 @ stored) > 0.9999 and float(v2 @ stored) > 0.9999
        assert c.get("/v1/models").json()["data"][0]["id"] == "all-MiniLM-L6-v2"
        assert c.get("/healthz").json() == {"status": "ready"}


def test_every_error_status_from_real_requests(ready: Api) -> None:
    with ready.client() as c:
        assert "not valid JSON" in str(error(c.post("/v1/search", content=b"{nope"), 400)["message"])
        assert (
            error(c.post("/v1/search", json=["a list"]), 400)["message"] == "the body must be a JSON object"
        )
        assert error(c.post("/v1/search", json={"k": 3}), 400)["param"] == "query"
        assert error(c.post("/v1/search", json={"query": "x", "k": 0}), 400)["param"] == "k"
        assert error(c.post("/v1/search", json={"query": "x", "kk": 1}), 400)["param"] == "kk"
        assert error(c.post("/v1/embeddings", json={"model": "m"}), 400)["param"] == "input"
        assert (
            error(c.post("/v1/embeddings", json={"input": [[101, 102]]}), 400)["code"]
            == "token_input_unsupported"
        )
        assert (
            error(c.post("/v1/embeddings", json={"input": ["ok", " "]}), 400)["message"]
            == "input[1] is empty"
        )
        assert error(c.post("/v1/embeddings", json={"input": "x", "encoding_format": "hex"}), 400)
        assert (
            error(c.post("/v1/embeddings", json={"input": "x", "dimensions": 1536}), 400)["param"]
            == "dimensions"
        )
        big = b'{"input": "' + b"a" * (70 * 1024) + b'"}'
        assert error(c.post("/v1/embeddings", content=big), 413)["code"] == "body_too_large"

        def chunked() -> object:
            for _ in range(80):
                yield b"a" * 1024

        assert error(c.post("/v1/embeddings", content=chunked()), 413)["code"] == "body_too_large"
        too_long = error(c.post("/v1/embeddings", json={"input": ["fine", LONG]}), 422)
        assert too_long["code"] == "context_length_exceeded" and "512" in str(too_long["message"])
        assert str(too_long["message"]).startswith("input[1] has ")
        assert (
            error(c.post("/v1/search", json={"query": LONG, "mode": "vector"}), 422)["code"]
            == "context_length_exceeded"
        )
        assert error(c.get("/nope"), 404)["message"] == "Invalid URL (GET /nope)"
        r = c.get("/v1/search")
        assert error(r, 405) and r.headers["allow"] == "POST"
        search_ok(c)
    with ready.tcp_client(token=None) as anonymous, ready.tcp_client(token="wrong") as wrong:
        r = anonymous.post("/v1/search", json={"query": "x"})
        assert error(r, 401)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert "valid token" in str(error(wrong.get("/v1/status"), 401)["message"])
        assert anonymous.get("/healthz").status_code == 200  # health checks need no token
    with ready.tcp_client(token=TOKEN) as t:
        search_ok(t)


def test_503_while_starting_and_stopping(api: Api) -> None:
    """A second server on the same parts, whose phase the test drives."""
    root = Path(tempfile.mkdtemp(prefix="embedd-503-"))
    stop = threading.Event()
    backend = DaemonBackend(api.scheduler, Published(api.store), query_prefix="", status=dict, stop=stop)
    closed = DaemonBackend(
        Scheduler(api.embedder), Published(api.store), query_prefix="", status=dict, stop=stop
    )
    servers = [ApiServer(ServeConfig(socket=root / f"{i}.sock"), b) for i, b in enumerate((backend, closed))]
    for server in servers:
        server.start()
    try:
        with (
            httpx.Client(transport=httpx.HTTPTransport(uds=str(root / "0.sock")), base_url="http://e") as c,
            httpx.Client(transport=httpx.HTTPTransport(uds=str(root / "1.sock")), base_url="http://e") as d,
        ):
            assert c.get("/healthz").status_code == 503
            r = c.post("/v1/search", json={"query": "harbour"})
            assert error(r, 503)["code"] == "starting" and r.headers["retry-after"] == "1"
            backend.mark_ready()
            search_ok(c)
            closed.mark_ready()  # ready, but its embedder is not running: as while stopping
            assert error(d.post("/v1/embeddings", json={"input": "x"}), 503)["code"] == "stopping"
            stop.set()
            assert c.get("/healthz").json() == {"status": "stopping"}
            assert error(c.post("/v1/embeddings", json={"input": "x"}), 503)["code"] == "stopping"
    finally:
        for server in servers:
            server.stop()
        root.rmdir()
    assert not list(root.parent.glob(root.name))


def test_a_client_hanging_up_mid_request_harms_nothing(ready: Api) -> None:
    body = b'{"query": "harbour survey", "k": 3}'
    head = (
        b"POST /v1/search HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    with capture_logs() as logs:
        for cut in (10, len(head) - 40, len(head % len(body)) + 5):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(ready.socket))
            s.sendall((head % len(body) + body)[:cut])  # in the head, in the body
            s.close()
        # A whole request, gone before the answer (while its query waits for or runs in the embedder).
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(ready.socket))
            s.sendall(head % len(body) + body)
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        with ready.client() as c:
            for _ in range(3):
                search_ok(c)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


def test_200_concurrent_connections_are_all_answered(ready: Api) -> None:
    async def one(i: int, opened: asyncio.Event, count: list[int]) -> int:
        reader, writer = await asyncio.open_unix_connection(str(ready.socket))
        count[0] += 1
        if count[0] == 200:
            opened.set()
        await opened.wait()  # all 200 are open before any sends its request
        body = b'{"query": "survey %d", "k": 1}' % i
        writer.write(
            b"POST /v1/search HTTP/1.1\r\nHost: e\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body)
            + body
        )
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        await reader.read()
        writer.close()
        return status

    async def main() -> list[int]:
        opened = asyncio.Event()
        count = [0]
        return await asyncio.wait_for(asyncio.gather(*(one(i, opened, count) for i in range(200))), 300)

    assert asyncio.run(main()) == [200] * 200


def test_a_slowloris_client_does_not_block_others_and_is_cut_off(ready: Api) -> None:
    """20 clients trickle their headers; a normal client is answered meanwhile; the deadline closes them."""
    tricklers = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(ready.socket))
        s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: e\r\n")
        tricklers.append(s)
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(ready.socket))  # connects and never sends a byte
    with ready.client() as c:
        search_ok(c)
    closed: set[int] = set()
    deadline = time.monotonic() + 120
    while len(closed) < len(tricklers) + 1 and time.monotonic() < deadline:
        for i, s in enumerate([*tricklers, idle]):
            if i in closed:
                continue
            try:
                if i < len(tricklers):
                    s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.05)
                if s.recv(1) == b"":
                    closed.add(i)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.2)
    for s in [*tricklers, idle]:
        s.close()
    assert len(closed) == len(tricklers) + 1, "the header deadline did not close every slow client"
    with ready.client() as c:
        search_ok(c)


@pytest.mark.parametrize("transport", ["socket", "tcp"])
def test_the_openai_client_and_langchain_work_unmodified(ready: Api, transport: str) -> None:
    import openai
    from langchain_openai import OpenAIEmbeddings

    http = ready.client() if transport == "socket" else httpx.Client()
    base = "http://embedd/v1" if transport == "socket" else f"http://{ready.tcp[0]}:{ready.tcp[1]}/v1"
    texts = [t for chunks in _docs().values() for t in chunks]
    stored = np.stack([e.vector for e in ready.store.iter_entries()])
    by_text = {e.content: e.vector for e in ready.store.iter_entries()}
    with http:
        client = openai.OpenAI(base_url=base, api_key=TOKEN, http_client=http, max_retries=0)
        got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
        vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
        assert vectors.shape == (len(texts), 384)
        for text, vec in zip(texts, vectors, strict=True):
            assert float(vec @ by_text[text]) > 0.9999
        assert stored.shape[0] == len(texts)
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="m", input=[[1, 2, 3]])
        lc = OpenAIEmbeddings(
            model="all-MiniLM-L6-v2",
            base_url=base,
            api_key=TOKEN,  # type: ignore[arg-type]
            http_client=http,
            check_embedding_ctx_length=False,
        )
        query = np.array(lc.embed_query(texts[0]), dtype=np.float32)
        docs = np.array(lc.embed_documents(texts[1:3]), dtype=np.float32)
        assert float(query @ by_text[texts[0]]) > 0.9999
        assert all(float(d @ by_text[t]) > 0.9999 for d, t in zip(docs, texts[1:3], strict=True))


def _docs() -> dict[str, list[str]]:
    from api_support import DOCS

    return DOCS


def test_a_body_that_never_arrives_gets_408(api: Api) -> None:
    """A second server on the same parts, whose body deadline the test sets."""
    root = Path(tempfile.mkdtemp(prefix="embedd-408-"))
    backend = DaemonBackend(
        api.scheduler, Published(api.store), query_prefix="", status=dict, stop=threading.Event()
    )
    backend.mark_ready()
    server = ApiServer(ServeConfig(socket=root / "api.sock"), backend, body_timeout_s=1.0)
    server.start()
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(60)
        s.connect(str(root / "api.sock"))
        s.sendall(b'POST /v1/search HTTP/1.1\r\nHost: e\r\nContent-Length: 100\r\n\r\n{"query":')
        answer = b""
        while b"}}" not in answer:  # the head and the whole error body
            piece = s.recv(4096)
            assert piece, answer
            answer += piece
        s.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"did not arrive within 1 s" in answer, "the deadline given, not the default"
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(root / "api.sock")), base_url="http://e"
        ) as c:
            search_ok(c)
    finally:
        server.stop()
        root.rmdir()


class SlowBackend:
    """A backend whose embeddings wait for the test: a request stays in flight on demand."""

    phase = "ready"
    model = "slow"
    dimension = 4
    query_prefix = ""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.pending: list[Future[np.ndarray]] = []

    def embed(self, texts: list[str]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        self.pending.append(future)
        self.called.set()
        return future

    def count_tokens(self, text: str) -> int:
        return 1

    def snapshot(self) -> object:
        raise AssertionError("not used")

    def status(self) -> dict[str, object]:
        return {}


def test_stopping_closes_the_listener_answers_what_is_in_flight_and_removes_the_socket() -> None:
    root = Path(tempfile.mkdtemp(prefix="embedd-stop-"))
    path = root / "s.sock"
    backend = SlowBackend()
    stop = threading.Event()
    server = ApiServer(ServeConfig(socket=path), backend)  # type: ignore[arg-type]
    server.start(stop)
    result: list[httpx.Response] = []

    def post() -> None:
        # Closed when done: a client left to the garbage collector warns in whichever test runs then.
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://e", timeout=60) as c:
            result.append(c.post("/v1/embeddings", json={"input": "x"}))

    client = threading.Thread(target=post)
    client.start()
    try:
        assert backend.called.wait(60)
        stop.set()  # as SIGTERM does
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the listener closes at once ...
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                break
            finally:
                probe.close()
            time.sleep(0.05)
        else:
            raise AssertionError("the listener stayed open after the stop")
        backend.pending[0].set_result(np.ones((1, 4), dtype=np.float32))  # ... the request in flight
        client.join(60)
        assert result and result[0].status_code == 200, result
        assert result[0].json()["data"][0]["embedding"] == [1.0, 1.0, 1.0, 1.0]
    finally:
        server.stop()
        client.join(60)
    assert not path.exists()
    root.rmdir()


def test_socket_failures_are_serve_errors_the_daemon_can_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a refused address family (the unit's RestrictAddressFamilies=AF_UNIX)
    and a stale socket that cannot be removed escaped as raw OSErrors, which a SIGHUP reload
    does not catch."""
    import errno
    import os

    from daemon.errors import ServeError
    from daemon.serve import server

    real_socket = socket.socket

    def no_inet(family: int = socket.AF_INET, *args: object, **kw: object) -> socket.socket:
        if family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real_socket(family, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(server.socket, "socket", no_inet)
    with pytest.raises(ServeError, match="RestrictAddressFamilies"):
        server.bind_tcp("127.0.0.1", 0)
    monkeypatch.undo()

    # A crashed daemon's socket that cannot be removed (a sticky folder, another owner).
    stale = real_socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "embedd.sock"))
    stale.close()

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(ServeError, match="cannot remove the stale socket"):
        server.bind_unix(tmp_path / "embedd.sock")
