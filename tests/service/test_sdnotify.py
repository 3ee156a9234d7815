"""The systemd notify protocol, against a real datagram socket as systemd would listen."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from support import Daemon, wait_for, write_config

from daemon.service.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def test_notifier_sends_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    assert n.enabled
    n.ready("3 files")
    n.status("busy")
    n.watchdog()
    n.stopping()
    n.close()
    assert _drain(sock) == [
        "READY=1\nSTATUS=3 files",
        "STATUS=busy",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_abstract_namespace_socket() -> None:
    name = f"embedd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    n = Notifier("@" + name)
    try:
        n.ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    finally:
        n.close()
        sock.close()


def test_without_notify_socket_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready("nothing happens")


def test_a_dead_socket_is_logged_not_raised(tmp_path: Path) -> None:
    address = str(tmp_path / "nobody-listens.sock")
    n = Notifier(address)
    with structlog.testing.capture_logs() as logs:
        n.ready("x")  # must not raise
    n.close()
    failed = [e for e in logs if e["event"] == "sd_notify_failed"]
    assert len(failed) == 1, logs
    assert failed[0]["socket"] == address
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["reason"]


def test_daemon_reports_ready_status_and_stopping(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str], listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    cfg = write_config(tmp_path, default_model)
    (tmp_path / "inbox" / "a.txt").write_text("A note about lighthouses and the sea.")
    daemon = Daemon(cfg, {**cli_env, "NOTIFY_SOCKET": path})
    seen: list[str] = []

    def got(prefix: str) -> bool:
        seen.extend(_drain(sock))
        return any(m.startswith(prefix) for m in seen)

    try:
        wait_for(lambda: got("READY=1"), what="READY=1")
        ready = next(m for m in seen if m.startswith("READY=1"))
        assert "STATUS=" in ready and "queued" in ready
        daemon.wait_event("store_saved")
        wait_for(
            lambda: any("1 files, 1 chunks" in m for m in seen) or got("STATUS=1 files"), what="a STATUS line"
        )
    finally:
        assert daemon.stop(signal.SIGTERM) == 0
    wait_for(lambda: got("STOPPING=1"), what="STOPPING=1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keepalive_is_rate_limited_to_half_the_watchdog_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    clock = FakeClock()
    n = Notifier(path, watchdog_usec="10000000", clock=clock)
    assert n.watchdog_interval_s == 10.0
    for t in (0.0, 1.0, 4.9, 5.0, 9.0, 10.1):
        clock.now = t
        n.keepalive()
    n.close()
    assert _drain(sock) == ["WATCHDOG=1"] * 3


def test_no_keepalive_without_a_watchdog(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path, watchdog_usec="")
    n.keepalive()
    n.close()
    assert _drain(sock) == []


def test_daemon_pets_the_watchdog_while_it_works(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str], listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    cfg = write_config(tmp_path, default_model)
    env = {**cli_env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    daemon = Daemon(cfg, env)
    seen: list[str] = []
    try:
        daemon.ready()
        wait_for(lambda: seen.extend(_drain(sock)) or seen.count("WATCHDOG=1") >= 3, what="three WATCHDOG=1")
    finally:
        assert daemon.stop() == 0
