"""Helpers for end-to-end tests: real PDFs, the real CLI in a subprocess, polling the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fpdf import FPDF

T = TypeVar("T")
DEADLINE_S = 120.0


def make_pdf(pages: list[str], *, user_password: str | None = None) -> bytes:
    """A real PDF from fpdf2; an empty string gives a page without text."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 10, text)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    return bytes(pdf.output())


def wait_for(predicate: Callable[[], T | None], *, timeout: float = DEADLINE_S, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def write_config(root: Path, model: Path, *, watch: str = "inbox", extra: str = "", daemon: str = "") -> Path:
    """A config in ``root`` that watches ``root/watch`` and stores into ``root/data``."""
    (root / watch).mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(
        f"""
[model]
path = "{model}"

[store]
path = "data/embeddings.json"

[[watch]]
path = "{watch}"

[daemon]
debounce_ms = 200
log_format = "json"
{daemon}
{extra}
"""
    )
    return cfg


class Daemon:
    """The real ``embedd`` CLI running in a subprocess, with its JSON log captured to a file."""

    def __init__(self, config: Path, env: dict[str, str], *args: str) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(config), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Log events so far (optionally only those named ``name``)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out

    def wait_event(
        self, name: str, *, count: int = 1, timeout: float = DEADLINE_S, **fields: Any
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events named ``name`` (with matching fields) were logged."""

        def found() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None and len(self._matching(name, fields)) < count:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
                )
            hits = self._matching(name, fields)
            return hits if len(hits) >= count else None

        return wait_for(found, timeout=timeout, what=f"{count} x {name} {fields}")

    def _matching(self, name: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in self.events(name) if all(e.get(k) == v for k, v in fields.items())]

    def ready(self) -> Daemon:
        self.wait_event("daemon_ready")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def read_store(path: Path) -> dict[str, Any] | None:
    """The store as JSON, or None while it does not exist yet."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    assert isinstance(data, dict)
    return data


def entries_by_source(store: dict[str, Any], source: str) -> list[dict[str, Any]]:
    return sorted(
        (e for e in store["embeddings"] if e["metadata"]["source"] == source),
        key=lambda e: e["metadata"]["chunk"],
    )


def cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``embedd ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_without_systemd() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env
