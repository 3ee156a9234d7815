"""The systemd notify protocol: datagrams to $NOTIFY_SOCKET; nothing at all when it is unset."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd."""

    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        # systemd sets WATCHDOG_USEC (and WATCHDOG_PID) when the unit has WatchdogSec=.
        if watchdog_usec is None:
            pid = os.environ.get("WATCHDOG_PID")
            watchdog_usec = os.environ.get("WATCHDOG_USEC", "") if pid in (None, str(os.getpid())) else ""
        try:
            self._watchdog_s = int(watchdog_usec) / 1e6 if watchdog_usec else 0.0
        except ValueError:
            self._watchdog_s = 0.0
        self._clock = clock
        self._last_keepalive = float("-inf")
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with Type=notify."""
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram; failures are logged, never raised."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", socket=self._address, reason=exc.strerror or str(exc))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    @property
    def watchdog_interval_s(self) -> float:
        """systemd's watchdog timeout, 0 when the unit has none."""
        return self._watchdog_s

    def keepalive(self) -> None:
        """``WATCHDOG=1`` at most every half watchdog interval; call it whenever work progresses."""
        if self._sock is None or self._watchdog_s <= 0:
            return
        now = self._clock()
        if now - self._last_keepalive >= self._watchdog_s / 2:
            self._last_keepalive = now
            self.watchdog()

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
