"""No access from web pages: raw HTTP requests with exactly the Host, Origin and Sec-Fetch
headers a browser (or an attacker's page through DNS rebinding) sends, against a real
``ApiServer`` on loopback TCP and a Unix socket, over a small fake backend."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import orjson
import pytest
from structlog.testing import capture_logs

from daemon.config import ServeConfig
from daemon.serve.guard import tcp_policy
from daemon.serve.server import ApiServer


class FakeBackend:
    """Ready at once; embeddings are ones; a search fails in the route (400) before the snapshot."""

    phase = "ready"
    model = "fake"
    dimension = 2
    query_prefix = ""

    def embed(self, texts: list[str]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        future.set_result(np.ones((len(texts), 2), dtype=np.float32))
        return future

    def count_tokens(self, text: str) -> int:
        return 1

    def snapshot(self) -> object:
        raise AssertionError("no search gets this far in these tests")

    def status(self) -> dict[str, object]:
        return {"daemon": {"running": True}}


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def cors(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.startswith("access-control-")}

    def error_code(self) -> str:
        assert self.headers["content-type"] == "application/json", self.body
        error = orjson.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return str(error["code"])


def send(
    address: tuple[str, int] | Path,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
) -> Answer:
    """One request, written byte for byte as given (no Host unless ``headers`` has one)."""
    if isinstance(address, Path):
        sock = socket.socket(socket.AF_UNIX)
        target: object = str(address)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        target = address
    lines = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    with sock:
        sock.settimeout(60)
        sock.connect(target)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        raw = b""
        while piece := sock.recv(65536):
            raw += piece
    return Answer(raw)


class Running:
    def __init__(self, server: ApiServer, root: Path) -> None:
        self.server = server
        self.socket = root / "g.sock"
        tcp = server.listeners[-1].address
        host, _, port = tcp.rpartition(":")
        self.tcp = (host.strip("[]"), int(port))
        self.port = int(port)


@pytest.fixture
def start() -> Iterator[object]:
    servers: list[ApiServer] = []
    roots: list[Path] = []

    def run(**serve: object) -> Running:
        root = Path(tempfile.mkdtemp(prefix="embedd-guard-"))
        roots.append(root)
        token = serve.pop("token", None)
        if token is not None:
            (root / "token").write_text(f"{token}\n")
            serve["token_file"] = root / "token"
        config = ServeConfig(socket=root / "g.sock", **{"tcp": ("127.0.0.1", 0), **serve})  # type: ignore[arg-type]
        server = ApiServer(config, FakeBackend())  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return Running(server, root)

    yield run
    for server in servers:
        server.stop()
    for root in roots:
        for p in root.iterdir():
            p.unlink()
        root.rmdir()


ROUTES = [
    ("POST", "/v1/search", b'{"query": "harbour"}'),
    ("GET", "/v1/status", b""),
    ("GET", "/healthz", b""),
    ("POST", "/v1/embeddings", b'{"input": "harbour"}'),
]


def test_rebinding_hosts_are_refused_on_every_route_and_logged_once_each(start: object) -> None:
    api = start()  # type: ignore[operator]
    port = api.port
    hosts = [
        f"attacker.example:{port}",
        "attacker.example",
        f"localhost.attacker.example:{port}",
        f"127.0.0.1.nip.io:{port}",
        f"user@127.0.0.1:{port}",
        f"127.0.0.1:{port}@attacker.example",
        "127.0.0.1:1",  # another port: another server's name
        f"localhost:{port}.",
        f"127.1:{port}",
        "",
        "%%garbage%%",
    ]
    with capture_logs() as logs:
        for _ in range(2):
            for host in hosts:
                for method, path, body in ROUTES:
                    r = send(api.tcp, method, path, [("Host", host), ("Content-Type", "text/plain")], body)
                    assert r.status == 421, (host, path, r.body)
                    assert r.error_code() == "host_not_allowed" and not r.cors()
        # HTTP/1.0 may omit Host; on TCP that is refused too (browsers always send one).
        r = send(api.tcp, "GET", "/healthz", [], version="HTTP/1.0")
        assert r.status == 421 and r.error_code() == "host_not_allowed"
    refused = [e for e in logs if e["event"] == "api_host_refused"]
    assert sorted(e["value"] for e in refused) == sorted({*hosts, "(none)"}), refused
    assert all(e["log_level"] == "warning" for e in refused)
    # The same request with the listener's own name is answered.
    assert send(api.tcp, "GET", "/healthz", [("Host", f"127.0.0.1:{port}")]).status == 200


def test_the_issues_attack_and_cross_site_posts_of_every_content_type_are_refused(start: object) -> None:
    api = start()  # type: ignore[operator]
    host = ("Host", f"127.0.0.1:{api.port}")
    search = b'{"query": "harbour survey", "k": 3}'
    # The issue's measurement: a DNS-rebinding page's POST.
    r = send(api.tcp, "POST", "/v1/search", [("Host", f"attacker.example:{api.port}")], search)
    assert r.status == 421 and b"harbour" not in r.body
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json",
    ):
        for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{api.port}.evil", "https://x"):
            headers = [
                host,
                ("Origin", origin),
                ("Content-Type", content_type),
                ("Sec-Fetch-Site", "cross-site"),
            ]
            for method, path, body in ROUTES:
                r = send(api.tcp, method, path, headers, body)
                assert r.status == 403, (content_type, origin, path, r.body)
                assert r.error_code() == "origin_not_allowed" and not r.cors()
    # Without an Origin, a subresource of another site (an <img>, a <script>) is refused ...
    for site in ("cross-site", "same-site"):
        r = send(
            api.tcp, "GET", "/v1/status", [host, ("Sec-Fetch-Site", site), ("Sec-Fetch-Mode", "no-cors")]
        )
        assert r.status == 403 and r.error_code() == "origin_not_allowed"
    # ... but following a link to the API from another site is a navigation the user made.
    nav = [host, ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate")]
    assert send(api.tcp, "GET", "/healthz", nav).status == 200
    # Two Origin headers are not one allowed origin.
    own = ("Origin", f"http://127.0.0.1:{api.port}")
    assert send(api.tcp, "GET", "/healthz", [host, own, ("Origin", "http://attacker.example")]).status == 403


def test_preflights_are_refused_without_cors_headers(start: object) -> None:
    api = start()  # type: ignore[operator]
    for origin in ("http://attacker.example", f"http://127.0.0.1:{api.port}", "null"):
        for path in ("/v1/search", "/v1/embeddings", "/v1/status", "/healthz"):
            r = send(
                api.tcp,
                "OPTIONS",
                path,
                [
                    ("Host", f"127.0.0.1:{api.port}"),
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                    ("Access-Control-Request-Headers", "content-type"),
                ],
            )
            assert r.status in (403, 405), (origin, path, r.status)  # own origin: no preflight route
            assert not r.cors(), r.headers
            assert origin.endswith(str(api.port)) or r.status == 403


def test_same_origin_and_no_origin_are_answered(start: object) -> None:
    api = start()  # type: ignore[operator]
    port = api.port
    for name in ("127.0.0.1", "localhost", "[::1]"):
        for host in (name, f"{name}:{port}", name.upper()):
            plain = [("Host", host)]
            assert send(api.tcp, "GET", "/healthz", plain).status == 200, host
        same = [
            ("Host", f"{name}:{port}"),
            ("Origin", f"http://{name}:{port}"),
            ("Sec-Fetch-Site", "same-origin"),
            ("Content-Type", "application/json"),
        ]
        r = send(api.tcp, "POST", "/v1/embeddings", same, b'{"input": "a"}')
        assert r.status == 200 and orjson.loads(r.body)["data"][0]["embedding"] == [1.0, 1.0]
        assert not r.cors()
        # The search route is reached (its 400 names the field), not refused.
        r = send(api.tcp, "POST", "/v1/search", same, b'{"k": 3}')
        assert r.status == 400 and orjson.loads(r.body)["error"]["param"] == "query"
        assert send(api.tcp, "GET", "/v1/status", [("Host", f"{name}:{port}")]).status == 200


def test_an_ipv6_listener_answers_its_own_name(start: object) -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    api = start(tcp=("::1", 0))  # type: ignore[operator]
    own = [("Host", f"[::1]:{api.port}"), ("Origin", f"http://[::1]:{api.port}")]
    assert send(api.tcp, "POST", "/v1/embeddings", own, b'{"input": "a"}').status == 200
    assert send(api.tcp, "GET", "/healthz", [("Host", f"[0::1]:{api.port}")]).status == 421
    assert send(api.tcp, "GET", "/healthz", [("Host", f"attacker.example:{api.port}")]).status == 421


def test_allowed_hosts_and_allowed_origins_are_honoured(start: object) -> None:
    api = start(  # type: ignore[operator]
        allowed_hosts=("embedd.lan", "box.internal:9000"),
        allowed_origins=("http://app.example:3000", "chrome-extension://abcdefgh"),
    )
    port = api.port
    for host in ("embedd.lan", f"embedd.lan:{port}", "box.internal:9000"):
        assert send(api.tcp, "GET", "/healthz", [("Host", host)]).status == 200, host
    for host in ("box.internal", f"box.internal:{port}", "sub.embedd.lan"):
        assert send(api.tcp, "GET", "/healthz", [("Host", host)]).status == 421, host
    # A page served under an allowed name is the listener's own: answered, no CORS headers.
    r = send(api.tcp, "GET", "/v1/status", [("Host", "embedd.lan"), ("Origin", "https://embedd.lan")])
    assert r.status == 200 and not r.cors()
    for origin in ("http://app.example:3000", "chrome-extension://abcdefgh"):
        headers = [("Host", f"127.0.0.1:{port}"), ("Origin", origin), ("Sec-Fetch-Site", "cross-site")]
        r = send(
            api.tcp,
            "POST",
            "/v1/embeddings",
            [*headers, ("Content-Type", "application/json")],
            b'{"input": "a"}',
        )
        assert r.status == 200 and r.headers["access-control-allow-origin"] == origin
        assert r.headers["vary"] == "Origin"
        pre = send(
            api.tcp,
            "OPTIONS",
            "/v1/search",
            [
                *headers,
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, content-type"),
                ("Access-Control-Request-Private-Network", "true"),
            ],
        )
        assert pre.status == 204 and pre.cors() == {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": "GET, POST",
            "access-control-allow-headers": "Authorization, Content-Type",
            "access-control-max-age": "600",
            "access-control-allow-private-network": "true",
        }
        assert pre.headers["vary"] == "Origin"
    # Another origin still gets 403 and no CORS headers, preflight or not.
    other = [("Host", f"127.0.0.1:{port}"), ("Origin", "http://app.example:3001")]
    assert send(api.tcp, "GET", "/healthz", other).status == 403
    pre = send(api.tcp, "OPTIONS", "/v1/search", [*other, ("Access-Control-Request-Method", "POST")])
    assert pre.status == 403 and not pre.cors()


def test_the_token_still_applies_after_the_guard(start: object) -> None:
    api = start(token="t0k3n")  # type: ignore[operator]
    host = ("Host", f"127.0.0.1:{api.port}")
    r = send(api.tcp, "GET", "/v1/status", [("Host", "attacker.example"), ("Authorization", "Bearer t0k3n")])
    assert r.status == 421  # a rebinding page with a stolen token is still refused
    r = send(api.tcp, "GET", "/v1/status", [host])
    assert r.status == 401 and r.error_code() == "invalid_api_key"
    assert send(api.tcp, "GET", "/v1/status", [host, ("Authorization", "Bearer t0k3n")]).status == 200
    assert send(api.tcp, "GET", "/healthz", [host]).status == 200


def test_the_socket_needs_no_host_and_refuses_foreign_origins(start: object) -> None:
    api = start()  # type: ignore[operator]
    for headers in ([("Host", "attacker.example")], [("Host", "embedd")], []):
        version = "HTTP/1.1" if headers else "HTTP/1.0"
        assert send(api.socket, "GET", "/healthz", headers, version=version).status == 200
    r = send(api.socket, "GET", "/v1/status", [("Host", "embedd"), ("Origin", "http://attacker.example")])
    assert r.status == 403 and not r.cors()
    # A page served through a proxy on the socket posts to the name it came from.
    same = [("Host", "search.example"), ("Origin", "https://search.example")]
    assert send(api.socket, "GET", "/v1/status", same).status == 200


def test_a_wildcard_bind_takes_every_ip_address_but_no_other_name() -> None:
    policy = tcp_policy("0.0.0.0", 8765, allowed_hosts=("box.lan",))
    for host in ("10.1.2.3:8765", "10.1.2.3", "[fe80::1]:8765", "127.0.0.1", "box.lan", "box.lan:8765"):
        assert policy.host_ok(host), host
    for host in ("10.1.2.3:80", "attacker.example:8765", "10.1.2.3.nip.io", "[fe80::1", "0127.0.0.1:8765"):
        assert not policy.host_ok(host), host
    assert policy.own_origin("http://10.1.2.3:8765", "10.1.2.3:8765")
    assert not policy.own_origin("http://10.1.2.3", "10.1.2.3:8765")  # port 80: another server's page
    specific = tcp_policy("127.0.0.2", 8765)
    assert specific.host_ok("127.0.0.2:8765") and not specific.host_ok("10.1.2.3:8765")


# --- bind_unix: the socket's mode without touching the umask --------------------------------


def test_bind_unix_never_changes_the_umask_and_gives_0660(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from daemon.serve import server

    def no_umask(mask: int) -> int:
        raise AssertionError("bind_unix changed the process-wide umask while other threads run")

    monkeypatch.setattr(os, "umask", no_umask)
    short = Path(tempfile.mkdtemp(prefix="embedd-bind-"))
    try:
        # A crash between bind and link left a private folder with a socket in it: cleared.
        leftover = short / ".api.sock.bind-crashed"
        leftover.mkdir(mode=0o700)
        crashed = socket.socket(socket.AF_UNIX)
        crashed.bind(str(leftover / "s"))
        crashed.close()
        # Near the 107-byte limit the private folder's path would not fit: bound through /proc.
        paths = [short / "api.sock", short / ("l" * (104 - len(str(short))))]
        for path in paths:
            sock = server.bind_unix(path)
            try:
                assert path.stat().st_mode & 0o7777 == 0o660
                assert stat_is_socket(path)
                probe = socket.socket(socket.AF_UNIX)
                probe.connect(str(path))
                probe.close()
            finally:
                sock.close()
        assert sorted(p.name for p in short.iterdir()) == sorted(p.name for p in paths)
        # Both are stale now (nobody accepts): replaced, as before.
        server.bind_unix(paths[0]).close()
        # Something appearing at the path between the stale check and the link is never replaced.
        monkeypatch.setattr(server, "_remove_stale", lambda path: None)
        paths[0].unlink()
        paths[0].write_text("not ours")
        with pytest.raises(server.ServeError, match="cannot listen on the socket"):
            server.bind_unix(paths[0])
        assert paths[0].read_text() == "not ours"
        assert sorted(p.name for p in short.iterdir()) == sorted(p.name for p in paths)
    finally:
        for p in short.iterdir():
            p.unlink()
        short.rmdir()


def stat_is_socket(path: Path) -> bool:
    import stat

    return stat.S_ISSOCK(path.lstat().st_mode)


def test_a_flood_of_distinct_hosts_logs_a_bounded_number_of_lines() -> None:
    """A page can make up names (x1.attacker.example, x2...): the log stops growing."""
    import asyncio

    from daemon.serve.guard import MAX_LOGGED, WebGuard

    async def never(scope: object, receive: object, send: object) -> None:
        raise AssertionError("a refused request reached the app")

    guard = WebGuard(never, tcp_policy("127.0.0.1", 8765))  # type: ignore[arg-type]
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def sent(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    async def flood() -> None:
        for i in range(MAX_LOGGED + 100):
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/healthz",
                "headers": [(b"host", b"x%d.a.example" % i)],
            }
            await guard(scope, receive, sent)  # type: ignore[arg-type]

    with capture_logs() as logs:
        asyncio.run(flood())
    assert statuses == [421] * (MAX_LOGGED + 100)
    assert len([e for e in logs if e["event"] == "api_host_refused"]) == MAX_LOGGED
    assert [e["event"] for e in logs if e["event"] == "api_refusals_not_logged"] == [
        "api_refusals_not_logged"
    ]
