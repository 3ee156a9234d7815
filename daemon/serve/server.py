"""Serving the API: the Unix socket and the optional TCP port, uvicorn in a thread of its own.

The daemon's main thread owns the signals, so uvicorn runs in a background thread (where it
installs no signal handlers) with one asyncio loop for every listener. We bind the sockets
ourselves, so a failure names the path or port and happens before anything else starts:

- the socket is bound in a private folder (0700) beside its path, given mode 0660 there and
  then linked into place, so it is never reachable with wider permissions, and the
  process-wide umask is never touched (other threads are running); the folder is created if
  missing;
- a socket file left by a crash (nobody accepts on it) is replaced; one a live process
  answers on is an error naming it; anything else at that path is never removed;
- TCP binds what the configuration says, which ``daemon.config`` allows off loopback only
  with ``allow_remote`` and a token; with ``token_file`` every TCP request but /healthz needs
  ``Authorization: Bearer <token>`` (the socket is guarded by its file permissions);
- in front of each listener's app, ``guard.WebGuard`` answers only requests whose ``Host``
  names the listener and that come from no other web page (``Origin``), before the token.

Limits: ``max_connections`` per listener (uvicorn answers 503 beyond), a 10 s deadline for a
request's head (uvicorn has none: a client trickling its headers would hold a connection
forever), 30 s for its body (in the app), 16 KiB of buffered head, 5 s keep-alive.

Stopping closes the listeners at once, answers the requests in flight (for up to
``GRACEFUL_S``), then removes the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import glob
import os
import socket
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from daemon.config import ServeConfig
from daemon.errors import ServeError
from daemon.log import display_path, route_to_events
from daemon.serve.app import BODY_TIMEOUT_S, Backend, build_app
from daemon.serve.guard import WebGuard, socket_policy, tcp_policy

log = structlog.get_logger("embedd")

SOCKET_MODE = 0o660
HEADER_TIMEOUT_S = 10.0
GRACEFUL_S = 10
BACKLOG = 1024
MAX_SOCKET_ADDRESS = 107  # bytes of sun_path without its NUL


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request's head.

    A connection that sends nothing, or trickles its request line and headers, is closed
    ``HEADER_TIMEOUT_S`` after it opened (or after its previous response). It never blocked
    other clients (asyncio), but it held a connection and a file descriptor forever.
    """

    header_timeout = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()  # the head is complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def bind_unix(path: Path, *, mode: int = SOCKET_MODE, backlog: int = BACKLOG) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``; a stale socket file there is replaced.

    Raises ServeError when a live server answers at ``path``, when something other than a
    socket is there, or when the folder or socket cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"cannot create the socket's folder {path.parent}: {exc.strerror or exc}") from exc
    _remove_stale(path)
    _remove_private_folders(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    private: Path | None = None
    try:
        # bind creates the socket with 0777 & ~umask; in a 0700 folder of ours nobody else can
        # reach it until chmod has narrowed it, and no thread's umask is changed.
        private = Path(tempfile.mkdtemp(prefix=f".{path.name}.bind-", dir=path.parent))
        staged = private / "s"
        _bind_in(sock, staged)
        staged.chmod(mode)
        _move_into_place(staged, path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on the socket {display_path(path)}: {exc.strerror or exc}") from exc
    finally:
        if private is not None:
            _remove_folder(private)
    return sock


def _move_into_place(staged: Path, path: Path) -> None:
    """Rename ``staged`` to ``path``, failing (EEXIST) when something took the path meanwhile.

    A rename, not link-then-unlink: a bound socket whose own name was unlinked stays an orphan
    the kernel counts, and the file system could no longer be remounted read-only. renameat2's
    RENAME_NOREPLACE refuses to replace another server's socket, as bind would; where the
    kernel or file system lacks it, a plain rename (after the stale check) is the fallback.
    """
    libc = _libc()
    if libc is not None:
        at_fdcwd = -100
        rc = libc.renameat2(at_fdcwd, os.fsencode(staged), at_fdcwd, os.fsencode(path), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(path))
    staged.rename(path)


_RENAME_NOREPLACE = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2  # glibc 2.28 and later  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _bind_in(sock: socket.socket, staged: Path) -> None:
    """Bind ``sock`` at ``staged``, through /proc/self/fd when the path is too long for sun_path."""
    address = os.fsencode(staged)
    if len(address) <= MAX_SOCKET_ADDRESS:
        sock.bind(address)
        return
    # The private folder made a path the configuration allowed too long: name the folder by
    # its descriptor instead (Linux resolves /proc/self/fd/N to the folder itself).
    fd = os.open(staged.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{fd}/{staged.name}".encode())
    finally:
        os.close(fd)


def _remove_folder(folder: Path) -> None:
    """Remove a private bind folder and the staged socket in it; never anything else."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if stat.S_ISSOCK(entry.lstat().st_mode):
                entry.unlink()
        folder.rmdir()


def _remove_private_folders(path: Path) -> None:
    """Private bind folders a crash left beside ``path`` (ours: same owner, only a socket inside)."""
    with contextlib.suppress(OSError):
        for folder in path.parent.glob(f".{glob.escape(path.name)}.bind-*"):
            st = folder.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                _remove_folder(folder)


def _remove_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServeError(
            f"{display_path(path)} exists and is not a socket; move it away or set serve.socket elsewhere"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fsencode(path))
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody accepts on it: a crashed daemon's socket.
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise ServeError(
                f"cannot remove the stale socket {display_path(path)}: {exc.strerror or exc}"
            ) from exc
        log.info("stale_socket_removed", path=display_path(path))
        return
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.ETIMEDOUT) or isinstance(exc, TimeoutError):
            raise ServeError(f"another server is listening on {display_path(path)} (busy)") from exc
        raise ServeError(f"cannot check the socket {display_path(path)}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise ServeError(
        f"another server is listening on {display_path(path)}: another embedd daemon? stop it, or set "
        "serve.socket to another path"
    )


def bind_tcp(host: str, port: int, *, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        # EAFNOSUPPORT under the shipped unit (RestrictAddressFamilies=AF_UNIX), or no IPv6.
        raise ServeError(
            f"cannot open a TCP socket for {host}:{port} (serve.tcp): {exc.strerror or exc}; under "
            "systemd allow it with RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 in a drop-in"
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} (serve.tcp): {exc.strerror or exc}") from exc
    return sock


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); ServeError when missing or empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        st = path.stat()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"cannot read serve.token_file {path}: {exc}") from exc
    if not text:
        raise ServeError(f"serve.token_file {path} is empty; put a long random token in it")
    if st.st_mode & 0o004:
        log.warning("token_file_world_readable", path=str(path), hint="chmod 0640 it")
    return text


@dataclass(frozen=True)
class Listener:
    """One address the API answers on."""

    kind: str  # "socket" or "tcp"
    address: str  # the socket path, or host:port with the real port

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "address": self.address}


class ApiServer:
    """The API's listeners and the thread that serves them; ``start`` then ``stop``."""

    def __init__(
        self, serve: ServeConfig, backend: Backend, *, body_timeout_s: float = BODY_TIMEOUT_S
    ) -> None:
        """``body_timeout_s``: how long a request body may take to arrive (408 after)."""
        self.serve = serve
        self._backend = backend
        self._body_timeout_s = body_timeout_s
        self._servers: list[tuple[uvicorn.Server, socket.socket]] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._socket_ino: int | None = None
        self.listeners: list[Listener] = []
        self.token: str | None = None  # what TCP clients must present, as read at start

    def start(self, stop: threading.Event | None = None) -> None:
        """Bind every listener and serve; ``stop`` being set closes the listeners at once.

        Raises ServeError (and leaves nothing behind) when a listener cannot be set up.
        """
        route_to_events(("uvicorn", "uvicorn.error", "uvicorn.access"), "http_server")
        serve = self.serve
        token = read_token(serve.token_file) if serve.token_file is not None and serve.tcp else None
        self.token = token
        make_app = functools.partial(
            build_app, self._backend, max_body_bytes=serve.max_body_bytes, body_timeout_s=self._body_timeout_s
        )
        try:
            if serve.socket is not None:
                sock = bind_unix(serve.socket)
                self._socket_ino = serve.socket.stat().st_ino
                app = make_app()
                policy = socket_policy(str(serve.socket), allowed_origins=serve.allowed_origins)
                self._add(sock, WebGuard(app, policy))
                self.listeners.append(Listener("socket", str(serve.socket)))
            if serve.tcp is not None:
                sock = bind_tcp(*serve.tcp)
                host, port = sock.getsockname()[:2]
                app = make_app(token=token)
                # The guard goes outside the token check: a refused page learns nothing, not even 401.
                policy = tcp_policy(
                    host, port, allowed_hosts=serve.allowed_hosts, allowed_origins=serve.allowed_origins
                )
                self._add(sock, WebGuard(app, policy))
                self.listeners.append(
                    Listener("tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
                )
        except OSError as exc:
            self._close_sockets()
            raise ServeError(f"cannot set up the API's listeners: {exc.strerror or exc}") from exc
        except BaseException:
            self._close_sockets()
            raise
        if not self._servers:
            return
        self._thread = threading.Thread(target=self._run, args=(stop,), name="embedd-http", daemon=True)
        self._thread.start()
        while not all(server.started for server, _ in self._servers):
            if not self._thread.is_alive():
                self._thread.join()
                self._unlink_socket()
                raise ServeError(f"the API server failed to start: {self._failure!r}")
            self._thread.join(0.01)
        log.info(
            "api_listening",
            listeners=[f"{x.kind} {x.address}" for x in self.listeners],
            token=token is not None,
        )

    def _add(self, sock: socket.socket, app: Any) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,  # our logging stays ours; uvicorn's access log would go to stdout
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http=HeaderDeadlineH11Protocol,
            ws="none",
            limit_concurrency=self.serve.max_connections,
            backlog=BACKLOG,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=GRACEFUL_S,
            h11_max_incomplete_event_size=16 * 1024,
            server_header=False,
        )
        self._servers.append((uvicorn.Server(config), sock))

    def _run(self, stop: threading.Event | None) -> None:
        try:
            asyncio.run(self._serve_all(stop))
        except BaseException as exc:  # uvicorn's startup calls sys.exit on failure
            self._failure = exc
            log.error("api_server_failed", error=repr(exc))

    async def _serve_all(self, stop: threading.Event | None) -> None:
        async def watch(stop: threading.Event) -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            self._ask_exit()

        watcher = asyncio.create_task(watch(stop)) if stop is not None else None
        try:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in self._servers))
        finally:
            if watcher is not None:
                watcher.cancel()

    def _ask_exit(self) -> None:
        for server, _ in self._servers:
            server.should_exit = True

    def stop(self, timeout: float = GRACEFUL_S + 5) -> None:
        """Stop accepting, answer what is in flight, remove the socket file. Idempotent."""
        self._ask_exit()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("api_server_stuck", seconds=timeout)
            self._thread = None
        self._close_sockets()
        self._unlink_socket()

    def _close_sockets(self) -> None:
        for _, sock in self._servers:
            sock.close()

    def _unlink_socket(self) -> None:
        # Only our own socket: a successor may already have bound the path.
        path = self.serve.socket
        if path is None or self._socket_ino is None:
            return
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == self._socket_ino:
                path.unlink()
        self._socket_ino = None
