"""A soak: the daemon under continuous churn and search traffic, checked for leaks and lost answers.

    python bench/soak.py                  # one hour: files changed every second, 10 searches/s
    python bench/soak.py --minutes 2      # a short run to check the benchmark itself

Every ``--churn-s`` one file of the watched folder is added, edited, renamed or deleted (the
folder holds between 50 and 200 files); a thread sends ``--qps`` searches per second over the
socket on a fixed schedule. At the start (after the first index and a warm-up) and at the end
(once the daemon is idle again) the daemon's resident memory, open file descriptors and
threads are sampled. Passes when every search was answered with 200, `embedd verify` is clean
at the end, no error was logged and the daemon stops with 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from corpus import sentences
from machine import machine_line
from servekit import QUERIES, RunningDaemon, default_model, embedd, write_config


def sample(pid: int) -> dict[str, float]:
    proc = psutil.Process(pid)
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "threads": proc.num_threads()}


class Churn:
    """Changes one file of ``inbox`` per call, keeping between ``low`` and ``high`` files."""

    def __init__(self, inbox: Path, *, low: int = 50, high: int = 200, seed: int = 5) -> None:
        self.inbox = inbox
        self.rng = random.Random(seed)
        self.text = sentences(seed)
        self.low, self.high = low, high
        self.serial = 0
        self.counts = {"add": 0, "edit": 0, "rename": 0, "delete": 0}

    def paragraphs(self, n: int) -> str:
        return "\n\n".join(" ".join(self.rng.sample(self.text, 6)) for _ in range(n))

    def files(self) -> list[Path]:
        return sorted(self.inbox.glob("*.txt"))

    def add(self) -> None:
        self.serial += 1
        tmp = self.inbox.parent / f"new{self.serial}.part"
        tmp.write_text(self.paragraphs(self.rng.randint(1, 4)))
        tmp.rename(self.inbox / f"f{self.serial:06}.txt")
        self.counts["add"] += 1

    def step(self) -> None:
        files = self.files()
        if len(files) < self.low:
            self.add()
            return
        action = self.rng.choice(["add", "edit", "edit", "rename", "delete"])
        if action == "add" and len(files) < self.high:
            self.add()
            return
        victim = self.rng.choice(files)
        if action == "delete" and len(files) > self.low:
            victim.unlink()
            self.counts["delete"] += 1
        elif action == "rename":
            self.serial += 1
            victim.rename(self.inbox / f"f{self.serial:06}.txt")
            self.counts["rename"] += 1
        else:
            with victim.open("a") as f:
                f.write("\n\n" + self.paragraphs(1))
            self.counts["edit"] += 1


class Searches:
    """``qps`` searches per second on a fixed schedule until stopped; counts what came back.

    Several senders share the schedule, so one slow answer does not delay the next request.
    """

    def __init__(self, daemon: RunningDaemon, qps: float, senders: int = 4) -> None:
        self.daemon = daemon
        self.qps = qps
        self.stop = threading.Event()
        self.sent = self.ok = 0
        self.failures: list[str] = []
        self.ms: list[float] = []
        self._lock = threading.Lock()
        self._start = 0.0
        self._threads = [
            threading.Thread(target=self._send, args=(k, senders), daemon=True) for k in range(senders)
        ]

    def start(self) -> None:
        self._start = time.monotonic()
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join()

    def _send(self, k: int, senders: int) -> None:
        i = k
        with self.daemon.client(timeout=60) as c:
            while not self.stop.is_set():
                delay = self._start + i / self.qps - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
                    continue
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "k": 5})
                    failure = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
                except Exception as exc:  # every failure is counted and shown
                    failure = repr(exc)
                with self._lock:
                    self.sent += 1
                    if failure is None:
                        self.ok += 1
                        self.ms.append((time.perf_counter() - t0) * 1000)
                    else:
                        self.failures.append(failure)
                i += senders


def wait_idle(daemon: RunningDaemon, timeout: float = 600) -> None:
    """Until the daemon has nothing queued and is not indexing."""
    deadline = time.monotonic() + timeout
    quiet = 0
    with daemon.client() as c:
        while time.monotonic() < deadline:
            live = c.get("/v1/status").json()["daemon"]
            busy = live["queued_files"] or live["bulk_index"] or live["embedder"]["busy"]
            quiet = 0 if busy else quiet + 1
            if quiet >= 5:
                return
            time.sleep(0.5)
    raise RuntimeError("the daemon did not become idle")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--qps", type=float, default=10.0, help="searches per second")
    parser.add_argument("--churn-s", type=float, default=1.0, help="seconds between two file changes")
    parser.add_argument("--model", type=Path, default=default_model())
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="embedd-soak-") as tmp:
        root = Path(tmp)
        cfg = write_config(root, args.model, extra="debounce_ms = 200\nrescan_interval_s = 60\n")
        churn = Churn(root / "inbox")
        for _ in range(100):
            churn.add()
        churn.counts = dict.fromkeys(churn.counts, 0)
        daemon = RunningDaemon(cfg)
        try:
            daemon.wait_ready()
            wait_idle(daemon)
            time.sleep(5)
            before = sample(daemon.proc.pid)
            searches = Searches(daemon, args.qps)
            searches.start()
            start = time.monotonic()
            end = start + args.minutes * 60
            steps = 0
            mid: dict[str, float] | None = None
            while time.monotonic() < end:
                if mid is None and time.monotonic() >= start + args.minutes * 30:
                    mid = sample(daemon.proc.pid)  # growth in the second half is a leak, not warm-up
                churn.step()
                steps += 1
                time.sleep(max(0.0, start + steps * args.churn_s - time.monotonic()))
            searches.stop.set()
            searches.join()
            wait_idle(daemon)
            time.sleep(5)
            after = sample(daemon.proc.pid)
            verify = embedd("verify", "--config", str(cfg), check=False)
        finally:
            code = daemon.stop()
        errors = []
        for line in daemon.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("level") in ("error", "critical"):
                errors.append(line[:300])
    half = mid or after
    flat = (
        after["fds"] <= before["fds"]
        and after["threads"] <= before["threads"]
        and after["rss_mb"] <= half["rss_mb"] * 1.05
    )
    ms = sorted(searches.ms)
    p95 = ms[int(0.95 * (len(ms) - 1))] if ms else float("nan")
    out = [
        f"# embedd soak, {args.minutes:g} minutes",
        "",
        machine_line(),
        "",
        "| | start | half-way | end |",
        "| --- | ---: | ---: | ---: |",
        f"| resident memory (MiB) | {before['rss_mb']:.1f} | {half['rss_mb']:.1f} | {after['rss_mb']:.1f} |",
        f"| open file descriptors | {before['fds']:.0f} | {half['fds']:.0f} | {after['fds']:.0f} |",
        f"| threads | {before['threads']:.0f} | {half['threads']:.0f} | {after['threads']:.0f} |",
        "",
        f"Flat: {'yes' if flat else 'NO'} (descriptors and threads as at the start; memory within 5% "
        "of the half-way figure).",
        f"File changes: {steps} ({', '.join(f'{k} {v}' for k, v in churn.counts.items())}).",
        f"Searches: {int(args.minutes * 60 * args.qps)} scheduled, {searches.sent} sent (fewer when answers "
        f"are slower than the schedule), {searches.ok} answered with 200, {len(searches.failures)} failed; "
        f"p95 {p95:.1f} ms.",
        f"`embedd verify` at the end: exit {verify.returncode}"
        + ("" if verify.returncode == 0 else f"\n{verify.stdout[-2000:]}"),
        f"Daemon exit code: {code}; error events logged: {len(errors)}.",
    ]
    out += [f"  failure: {f}" for f in searches.failures[:10]]
    out += [f"  error: {e}" for e in errors[:10]]
    print("\n".join(out))
    passed = searches.failures == [] and searches.ok == searches.sent and verify.returncode == 0 and flat
    return 0 if passed and code == 0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
