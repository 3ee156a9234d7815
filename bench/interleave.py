"""Configurations measured side by side: one resident worker process each, taking turns.

Two builds of llama.cpp live in two virtual environments, so they cannot share a process; run
one after the other, they meet a different machine (on a shared 2-core VM the other tenants'
load moves from 3 to 10 within minutes). Here every configuration is loaded once in its own
process (``bench/worker.py --serve``) and they run one timed run each in turn, round after
round, a pause between two (so a thread pool that polls after its batch does not run into the
next one's time): neighbours in a round met nearly the same machine, and the median over
rounds of their ratio cancels what drifts between rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

WORKER = Path(__file__).resolve().parent / "worker.py"


def add_pool_arguments(parser: argparse.ArgumentParser, *, scope: str = "") -> None:
    """The options of a benchmark that sets ggml's thread-pool build beside the OpenMP one.

    ``scope`` names the rows the poll levels and rounds apply to (``"model-only "``).
    """
    parser.add_argument(
        "--pool-python",
        help="a Python whose llama-cpp-python was built with GGML_OPENMP=OFF: its rows (ggml's thread "
        "pool) run in the same invocation, alternating with this one's",
    )
    parser.add_argument(
        "--polls",
        type=lambda v: [int(p) for p in v.split(",")],
        default=[0, 50, 100],
        help=f"ggml pool poll levels for the {scope}rows (comma-separated)",
    )
    parser.add_argument("--rounds", type=int, default=1, help=f"{scope}rounds over all configurations")


class Resident:
    """One configuration in its own resident worker process."""

    def __init__(
        self, name: str, spec: dict[str, Any], env: dict[str, str], python: str | None, log: Path
    ) -> None:
        self.name = name
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [python or sys.executable, str(WORKER), "--serve", json.dumps(spec)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.hello = self._reply()

    def _reply(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("ok"):
                return reply
        raise RuntimeError(f"{self.name}: the worker ended ({self.proc.wait()}); see {self._log.name}")

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command, return its reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Runs:
    """What one configuration measured, round by round."""

    chunks: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.chunks / s for s in self.seconds]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_ms_per_chunk(self) -> float:
        return statistics.median(self.cpu_seconds) * 1000 / self.chunks

    def vs(self, other: Runs) -> float:
        """The median over rounds of this rate over ``other``'s in the same round."""
        return statistics.median(a / b for a, b in zip(self.rates, other.rates, strict=True))


def take_turns(
    residents: Sequence[Resident],
    rounds: int,
    *,
    pause: float = 0.5,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Runs]:
    """``rounds`` rounds of one timed run per resident, in turn."""
    runs = {r.name: Runs(int(r.hello["chunks"])) for r in residents}
    for rnd in range(rounds):
        for resident in residents:
            time.sleep(pause)
            reply = resident.ask("run")
            got = runs[resident.name]
            got.seconds.append(float(reply["seconds"]))
            got.cpu_seconds.append(float(reply["cpu_seconds"]))
            got.threads.append(int(reply["threads"]))
            progress(
                f"round {rnd + 1}, {resident.name}: {got.rates[-1]:.1f} chunks/s, threads {got.threads[-1]}"
            )
    return runs
