"""A small client of the running daemon's API, for ``embedd search``, ``status`` and ``mcp``.

Standard library only (``http.client`` over the Unix socket or TCP): ``embedd search`` stays
quick to start. It prefers the socket; it uses TCP only when the socket is off, with the token
from ``serve.token_file`` when it can read it. ``DaemonUnavailable`` means nobody answered, and
callers then work without a daemon; ``DaemonRequestError`` is an answer with an error status.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import stat
from pathlib import Path
from typing import Any

import orjson

from daemon.config import Config
from daemon.errors import DaemonRequestError, DaemonUnavailable

CONNECT_TIMEOUT_S = 2.0
# A search waits at most for one native batch of indexing; this is only against a hung daemon.
REQUEST_TIMEOUT_S = 120.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        self.sock = sock


class DaemonClient:
    """Requests to one daemon; each opens its own connection (the commands make one or two)."""

    def __init__(
        self,
        *,
        socket_path: Path | None = None,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if (socket_path is None) == (tcp is None):
            raise ValueError("give exactly one of socket_path and tcp")
        self.socket_path = socket_path
        self.tcp = tcp
        self.token = token
        self.timeout = timeout

    @classmethod
    def for_config(cls, config: Config) -> DaemonClient | None:
        """A client for ``config``'s daemon, or None when its API is off or cannot be there."""
        serve = config.serve
        if serve.socket is not None:
            try:
                if not stat.S_ISSOCK(serve.socket.stat().st_mode):
                    return None
            except OSError:
                return None
            return cls(socket_path=serve.socket)
        if serve.tcp is not None and serve.tcp[1] != 0:
            token = None
            if serve.token_file is not None:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    token = serve.token_file.read_text(encoding="utf-8").strip() or None
            host = "127.0.0.1" if serve.tcp[0] in ("0.0.0.0", "::") else serve.tcp[0]
            return cls(tcp=(host, serve.tcp[1]), token=token)
        return None

    def _connection(self) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _UnixConnection(self.socket_path, self.timeout)
        assert self.tcp is not None
        return http.client.HTTPConnection(self.tcp[0], self.tcp[1], timeout=self.timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON answer to one request; raises DaemonUnavailable or DaemonRequestError."""
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnavailable(f"no daemon answers at {self.where}: {exc}") from exc
        finally:
            conn.close()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if response.status >= 400:
            error = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(error, dict):
                raise DaemonRequestError(response.status, str(error.get("message")), error.get("code"))
            raise DaemonRequestError(response.status, raw.decode("utf-8", "replace").strip()[:200])
        if not isinstance(doc, dict):
            raise DaemonUnavailable(f"the daemon at {self.where} answered something that is not JSON")
        return doc

    @property
    def where(self) -> str:
        """The address, for messages."""
        if self.socket_path is not None:
            return str(self.socket_path)
        assert self.tcp is not None
        return f"{self.tcp[0]}:{self.tcp[1]}"

    def search(
        self, query: str, k: int, *, source_prefix: str | None = None, min_score: float | None = None
    ) -> dict[str, Any]:
        """``POST /v1/search``."""
        body: dict[str, Any] = {"query": query, "k": k}
        if source_prefix is not None:
            body["source_prefix"] = source_prefix
        if min_score is not None:
            body["min_score"] = min_score
        return self.request("POST", "/v1/search", body)

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        return self.request("GET", "/v1/status")

    def files(self, query: str) -> dict[str, Any]:
        """``GET /v1/files?<query>``."""
        return self.request("GET", "/v1/files" + (f"?{query}" if query else ""))

    def forget(self, prefix: str) -> dict[str, Any]:
        """``POST /v1/forget`` (answered on the Unix socket only)."""
        return self.request("POST", "/v1/forget", {"prefix": prefix})


def live_status(config: Config) -> dict[str, Any] | None:
    """The running daemon's own account of itself (the ``daemon`` part of /v1/status), if one answers."""
    client = DaemonClient.for_config(config)
    if client is None:
        return None
    try:
        live = client.status().get("daemon")
    except (DaemonUnavailable, DaemonRequestError):
        return None
    return live if isinstance(live, dict) else None
