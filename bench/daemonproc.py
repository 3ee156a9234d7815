"""The real daemon for benchmarks: `embedd run` in a subprocess on a temp config, its JSON log
read back, files dropped into its folder the way a user would (renamed in, whole)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class DaemonProc:
    """One ``embedd`` daemon watching ``workdir/inbox`` and storing into ``workdir/data``."""

    def __init__(
        self,
        workdir: Path,
        model: Path,
        env: dict[str, str],
        *,
        threads: int,
        nice: int,
        python: str | None = None,
    ) -> None:
        """``python``: the interpreter to run it with (another venv's llama.cpp build; default this one)."""
        self.workdir = workdir
        self.inbox = workdir / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "config.toml"
        self.config.write_text(
            f'[model]\npath = "{model}"\nthreads = {threads}\n\n'
            '[store]\npath = "data/embeddings.json"\n\n'
            '[[watch]]\npath = "inbox"\n\n'
            f'[daemon]\ndebounce_ms = 200\nlog_format = "json"\nnice = {nice}\n'
        )
        self.log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "daemon.cli", "--config", str(self.config)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
        return out

    def wait_for(
        self, name: str, *, timeout: float = 3600, poll: float = 0.02, **fields: Any
    ) -> dict[str, Any]:
        """The first event ``name`` whose fields equal ``fields``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(name):
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited ({self.proc.returncode}):\n{self.log_path.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} {fields} within {timeout:.0f}s")
            time.sleep(poll)

    def wait_count(self, name: str, count: int, *, timeout: float = 3600) -> list[dict[str, Any]]:
        """Wait until ``count`` events ``name`` were logged; all of them."""
        deadline = time.monotonic() + timeout
        while len(found := self.events(name)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(found)} of {count} {name} events:\n{self.log_path.read_text()[-4000:]}"
                )
            time.sleep(0.05)
        return found

    def ready(self) -> DaemonProc:
        self.wait_for("daemon_ready")
        return self

    def cpu_seconds(self) -> float:
        """CPU time the daemon used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def stage_files(staging: Path, texts: Sequence[str], per_file: int) -> list[Path]:
    """Write ``texts`` into files of ``per_file`` paragraphs each, outside the watched folder."""
    staging.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(texts), per_file):
        path = staging / f"doc-{i // per_file:05d}.txt"
        path.write_text("\n\n".join(texts[i : i + per_file]) + "\n")
        paths.append(path)
    return paths


def drop(paths: Sequence[Path], inbox: Path) -> float:
    """Move finished files into the watched folder (as a download or a copy tool does); when."""
    started = time.perf_counter()
    for path in paths:
        path.rename(inbox / path.name)
    return started
