"""Sharing the CPU: embedd's speed while other work runs, and what it costs that work.

    python bench/contention.py                 # the full run, about 40 minutes on 2 cores
    python bench/contention.py --quick         # a smoke test at a tiny size, a few minutes
    python bench/contention.py --part model    # only one part: model, foreground or e2e

"One core busy" is another process spinning in a pure-Python loop at nice 0, unpinned (the
scheduler puts it where it likes, as it would a user's job). Three parts, one table each:

1. model: chunks/s of the embedder alone, each configuration in a fresh process, on an idle
   machine and with one core busy: the settings before this release (OpenMP spinning,
   one thread per core, nice 0), passive waiting with each fixed thread count, adaptive
   threads, and the new defaults (adaptive, nice 10, batch CPU policy, idle I/O); with
   sentence-transformers (its own defaults) in the same run for the ratio.
2. foreground: a fixed CPU-bound job (LZW compression in pure Python, one thread, nice 0)
   timed alone and while the real daemon bulk-indexes, with the old and the new settings:
   the job's slowdown, and how much CPU the daemon got meanwhile.
3. e2e: the real daemon end to end, files dropped (renamed into the watched folder) until the
   store holding all of them is durable on disk (its `store_saved` event), idle and with one
   core busy, old and new settings.

The model is built as `embedd model build` does (the faster of f32 and f16 on this CPU). Every
table is headed by the machine's CPU model and flags and the load average at the start.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Captured before anything here loads llama.cpp (which sets OMP_WAIT_POLICY in this process).
BASE_ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

from corpus import chunks as make_chunks  # noqa: E402
from daemonproc import DaemonProc, drop, stage_files  # noqa: E402
from interleave import add_pool_arguments  # noqa: E402
from machine import describe, peer_python  # noqa: E402
from worker import measure  # noqa: E402

from daemon.embed.embedder import physical_cores  # noqa: E402

# libgomp's own default spin count: what embedd ran with before it set OMP_WAIT_POLICY=passive.
SPINNING = {"GOMP_SPINCOUNT": "300000"}
# The rows of llama.cpp built with GGML_OPENMP=OFF (`--pool-python`), which runs on ggml's pool.
POOL = "ggml pool"
PEER = "sentence-transformers (PyTorch defaults, batch 32)"
HOG = "while True: pass"

FOREGROUND = """
import sys, time
def lzw(data):
    table = {bytes([i]): i for i in range(256)}
    word, out = b"", 0
    for byte in data:
        grown = word + bytes((byte,))
        if grown in table:
            word = grown
        else:
            out += 1
            table[grown] = len(table)
            word = bytes((byte,))
    return out
text = (open(sys.argv[1], "rb").read() * 1000)[: int(sys.argv[2])]
t0 = time.perf_counter()
lzw(text)
print(time.perf_counter() - t0)
"""


@dataclass
class Setting:
    """How the daemon (or the embedder alone) runs."""

    name: str
    threads: int
    nice: int
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # None: this one (the OpenMP build)


def start_daemon(work: Path, model: Path, setting: Setting) -> DaemonProc:
    """The daemon in ``work``, run the way ``setting`` says (its build, threads, nice, environment)."""
    return DaemonProc(
        work,
        model,
        {**BASE_ENV, **setting.env},
        threads=setting.threads,
        nice=setting.nice,
        python=setting.python,
    )


def settings(cores: int) -> tuple[Setting, Setting, Setting]:
    before = Setting(f"before: OpenMP spinning, {cores} threads, nice 0", cores, 0, SPINNING)
    adaptive = Setting("passive, adaptive threads, nice 0", 0, 0)
    after = Setting("after (defaults): passive, adaptive, nice 10, batch, idle I/O", 0, 10)
    return before, adaptive, after


def daemon_settings(cores: int, pool_python: str | None) -> list[Setting]:
    """The daemon runs: the OpenMP build's settings, and the ggml-pool build's defaults."""
    out = list(settings(cores))
    if pool_python:
        out.append(
            Setting(f"{POOL} (its defaults): adaptive, nice 10, batch, idle I/O", 0, 10, {}, pool_python)
        )
    return out


@contextmanager
def busy_core(on: bool = True) -> Iterator[None]:
    """Another process keeping one core busy (nothing when ``on`` is false)."""
    if not on:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", HOG], env=BASE_ENV)
    try:
        time.sleep(0.5)
        yield
    finally:
        hog.kill()
        hog.wait()


def rate(result: dict[str, Any]) -> float:
    return float(result["chunks"] / statistics.median(result["seconds"]))


# --- 1. model only ----------------------------------------------------------------------------


@dataclass
class Case:
    """One model-only configuration: a worker spec, its environment and the Python that runs it."""

    name: str
    spec: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # None: this one (the OpenMP build)


def model_cases(cores: int, pool_python: str | None, polls: list[int]) -> list[Case]:
    """The OpenMP build's rows, then the ggml-pool build's (``pool_python``), then the peer."""
    before, adaptive, after = settings(cores)
    cases = [Case(before.name, {"system": "embedd", "threads": cores}, before.env)]
    if not pool_python:
        cases += [
            *(
                Case(f"passive, {k} thread{'s' if k > 1 else ''}, nice 0", {"system": "embedd", "threads": k})
                for k in range(cores, 0, -1)
            ),
            Case(adaptive.name, {"system": "embedd", "threads": 0}),
        ]
    cases.append(Case(after.name, {"system": "embedd", "threads": 0, "nice": 10}))
    if pool_python:
        # Against the build before: its settings before and after the contention work, and the
        # peer; the fixed thread counts of that work are not measured again.
        cases += [
            Case(
                f"{POOL}: {cores} threads, poll 0, nice 0",
                {"system": "embedd", "threads": cores, "poll": 0},
                python=pool_python,
            ),
            *(
                Case(
                    f"{POOL}: adaptive, poll {poll}, nice 10",
                    {"system": "embedd", "threads": 0, "nice": 10, "poll": poll},
                    python=pool_python,
                )
                for poll in polls
            ),
            Case(
                f"{POOL}: adaptive, a new pool per batch, nice 10",
                {"system": "embedd", "threads": 0, "nice": 10, "poll": None},
                python=pool_python,
            ),
        ]
    peer_py = peer_python(pool_python)
    if peer_py is False:
        print("  sentence-transformers not installed (make bench installs it): peer skipped", file=sys.stderr)
    else:
        cases.append(Case(PEER, {"system": "st", "threads": cores}, python=peer_py))
    return cases


def part_model(args: argparse.Namespace, model: Path, src: Path) -> dict[str, dict[str, float]]:
    cores = physical_cores()
    before, adaptive, after = settings(cores)
    cases = [
        c for c in model_cases(cores, args.pool_python, args.polls) if not args.only or args.only in c.name
    ]
    # Every case idle and busy once per round, the rounds one after the other: the two builds
    # alternate, so a machine whose other tenants come and go weighs on both alike.
    rates: dict[str, dict[str, list[float]]] = {c.name: {"idle": [], "busy": []} for c in cases}
    threads_seen: dict[str, list[int]] = {}
    for rnd in range(args.rounds):
        for case in cases:
            spec = {**case.spec, "chunks": args.chunks, "repeat": args.repeat}
            spec["model"] = str(src if spec["system"] == "st" else model)
            for busy in (False, True):
                with busy_core(busy):
                    result = measure(spec, {**BASE_ENV, **case.env}, python=case.python)
                key = "busy" if busy else "idle"
                rates[case.name][key].append(rate(result))
                if busy:
                    threads_seen.setdefault(case.name, []).extend(result["threads"])
                print(
                    f"  round {rnd + 1}, {case.name}, {'one core busy' if busy else 'idle'}: "
                    f"{rate(result):.1f} chunks/s (load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                )
    results = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rates.items()}

    peer = results.get(PEER)
    print(
        f"\n### Model only, {args.chunks} chunks, median of {args.rounds} round(s) of {args.repeat} runs "
        "after a warm-up, the configurations alternating\n"
    )
    print(f"{describe(llama=True)}\n")
    if args.pool_python:
        print(f"{POOL}: {other_build(args.pool_python)}\n")
    print(
        "| configuration | idle chunks/s | one core busy | kept when busy | vs sentence-transformers "
        "(idle / busy; median of the rounds' ratios) | busy vs before | threads when busy | "
        "idle, each round | busy, each round |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
    base = results[before.name]["busy"] if before.name in results else None
    for name, r in results.items():
        vs = f"{r['idle'] / peer['idle']:.2f}x / {r['busy'] / peer['busy']:.2f}x" if peer else "n/a"
        if peer and args.rounds > 1:
            # Each round's own ratio, then their median: what drifts between rounds cancels.
            idle, busy = (paired(rates[name], rates[PEER], k) for k in ("idle", "busy"))
            vs += f" ({idle:.2f}x / {busy:.2f}x)"
        seen = ",".join(str(t) for t in threads_seen.get(name, [])) or "-"
        vs_base = f"{r['busy'] / base:.2f}x" if base else "n/a"
        each = {k: ", ".join(f"{v:.1f}" for v in rates[name][k]) for k in ("idle", "busy")}
        print(
            f"| {name} | {r['idle']:.1f} | {r['busy']:.1f} | {r['busy'] / r['idle']:.0%} | {vs} | "
            f"{vs_base} | {seen} | {each['idle']} | {each['busy']} |"
        )
    if base and adaptive.name in results and after.name in results:
        fixed = max(
            (r["busy"] for n, r in results.items() if n.startswith("passive, ") and "adaptive" not in n),
            default=float("nan"),
        )
        print(
            f"\nAdaptive, one core busy: {results[adaptive.name]['busy'] / base:.2f}x the settings before "
            f"this release (goal 1.3x) and {results[adaptive.name]['busy'] / fixed:.2f}x the best fixed "
            f"thread count (goal 1.0x); the new defaults (nice 10): "
            f"{results[after.name]['busy'] / base:.2f}x."
        )
    for name, r in results.items():
        if name.startswith(POOL) and base and peer:
            omp = results.get(after.name)
            vs_omp = f", {r['idle'] / omp['idle']:.2f}x the OpenMP defaults" if omp else ""
            print(
                f"{name}: idle {r['idle'] / peer['idle']:.2f}x sentence-transformers (goal 1.0x){vs_omp}; "
                f"one core busy {r['busy'] / base:.2f}x OpenMP spinning (goal 1.3x)."
            )
    return results


def paired(a: dict[str, list[float]], b: dict[str, list[float]], key: str) -> float:
    """The median over rounds of ``a``'s rate over ``b``'s in the same round."""
    return statistics.median(x / y for x, y in zip(a[key], b[key], strict=True))


def other_build(python: str) -> str:
    """The machine line as ``python`` (another venv's llama.cpp build) sees it."""
    proc = subprocess.run(
        [python, str(ROOT / "bench" / "machine.py")], env=BASE_ENV, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip().rpartition("; ")[2]


# --- 2. the foreground job --------------------------------------------------------------------


def _foreground(sample: Path, size: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", FOREGROUND, str(sample), str(size)],
        env=BASE_ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(proc.stdout.strip())


def _calibrate(sample: Path, seconds: float) -> int:
    probe = 200_000
    took = min(_foreground(sample, probe) for _ in range(2))
    return max(10_000, int(probe * seconds / took))


def part_foreground(args: argparse.Namespace, model: Path, tmp: Path) -> None:
    sample = tmp / "foreground.txt"
    sample.write_text("\n\n".join(make_chunks(60)))
    size = _calibrate(sample, args.fg_seconds)
    alone = [_foreground(sample, size) for _ in range(args.fg_runs)]
    texts = make_chunks(args.fg_chunks)
    rows = []
    for setting in daemon_settings(physical_cores(), args.pool_python):
        work = tmp / f"fg-{len(rows)}"
        daemon = start_daemon(work, model, setting)
        try:
            daemon.ready()
            paths = stage_files(work / "staging", texts, per_file=5)
            drop(paths, daemon.inbox)
            daemon.wait_for("file_indexed")  # the bulk index is under way
            times, shares = [], []
            for _ in range(args.fg_runs):
                cpu0, t0 = daemon.cpu_seconds(), time.perf_counter()
                times.append(_foreground(sample, size))
                shares.append((daemon.cpu_seconds() - cpu0) / (time.perf_counter() - t0))
            indexed = len(daemon.events("file_indexed"))
        finally:
            daemon.stop()
        if indexed >= len(paths):
            print(
                f"  warning: {setting.name}: the daemon finished before the job; raise --fg-chunks",
                file=sys.stderr,
            )
        rows.append((setting.name, statistics.median(times), statistics.median(shares)))
        print(f"  {setting.name}: job {statistics.median(times):.2f}s", file=sys.stderr)
    alone += [_foreground(sample, size) for _ in range(args.fg_runs)]  # the machine may have drifted
    base = statistics.median(alone)
    print(f"\n### A CPU-bound foreground job while the daemon bulk-indexes, median of {args.fg_runs} runs\n")
    print(f"{describe()}\n")
    print(
        f"The job: LZW compression of {size / 1e6:.2f} MB in pure Python, one thread at nice 0: "
        f"{base:.2f} s alone (runs before and after: {', '.join(f'{t:.2f}' for t in alone)}).\n"
    )
    print("| daemon settings | job while indexing | slowdown (goal < 15%) | CPUs the daemon got meanwhile |")
    print("| --- | ---: | ---: | ---: |")
    for name, took, share in rows:
        print(f"| {name} | {took:.2f} s | {took / base - 1:+.0%} | {share:.2f} |")


# --- 3. end to end ----------------------------------------------------------------------------


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def part_e2e(
    args: argparse.Namespace, model: Path, tmp: Path, model_rates: dict[str, dict[str, float]]
) -> None:
    texts = make_chunks(args.chunks)
    before, _, after, *pool = daemon_settings(physical_cores(), args.pool_python)
    rows = []
    for setting in (before, after, *pool):
        for busy in (False, True):
            work = tmp / f"e2e-{len(rows)}"
            with busy_core(busy):
                daemon = start_daemon(work, model, setting)
                try:
                    daemon.ready()
                    paths = stage_files(work / "staging", texts, per_file=5)
                    wall0, started = time.time(), drop(paths, daemon.inbox)
                    indexed = daemon.wait_count("file_indexed", len(paths))
                    chunks = sum(e["chunks"] for e in indexed)
                    saved = daemon.wait_for("store_saved", entries=chunks)
                    # The log's own clock: when the durable write finished, not when we polled.
                    seconds = _event_time(saved) - wall0
                    polled = time.perf_counter() - started
                finally:
                    daemon.stop()
            model_rate = model_rates.get(setting.name, {}).get("busy" if busy else "idle")
            rows.append((setting.name, busy, len(paths), chunks, min(seconds, polled), model_rate))
            print(
                f"  {setting.name}, {'busy' if busy else 'idle'}: {chunks / seconds:.1f} chunks/s",
                file=sys.stderr,
            )
    print(f"\n### End to end: {len(texts)} chunks in files of 5 dropped into the folder -> store durable\n")
    print(f"{describe()}\n")
    print("| daemon settings | machine | files | chunks | drop -> durable | chunks/s | model-only chunks/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, busy, files, chunks, seconds, model_rate in rows:
        mr = f"{model_rate:.1f}" if model_rate else "n/a"
        print(
            f"| {name} | {'one core busy' if busy else 'idle'} | {files} | {chunks} | {seconds:.1f} s | "
            f"{chunks / seconds:.1f} | {mr} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=500, help="chunks per model-only and end-to-end run")
    parser.add_argument("--repeat", type=int, default=3, help="model-only runs per configuration (median)")
    parser.add_argument("--fg-seconds", type=float, default=5.0, help="the foreground job's length alone")
    parser.add_argument("--fg-runs", type=int, default=3, help="foreground runs per setting (median)")
    parser.add_argument(
        "--fg-chunks", type=int, default=2000, help="chunks the daemon gets to index under the foreground job"
    )
    parser.add_argument(
        "--part", choices=("model", "foreground", "e2e"), action="append", help="run only these"
    )
    add_pool_arguments(parser, scope="model-only ")
    parser.add_argument("--only", help="model-only rows whose name contains this")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.repeat, args.fg_seconds, args.fg_runs, args.fg_chunks = 40, 1, 1.0, 1, 300
    parts = args.part or ["model", "foreground", "e2e"]
    print(describe(llama=True), file=sys.stderr)

    import structlog

    from daemon.commands.model import build_command
    from daemon.embed.convert import default_model_source

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    tmp = Path(tempfile.mkdtemp(prefix="embedd-contention-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # models and stores: hundreds of MB
    src = default_model_source()
    model = tmp / "models" / "all-MiniLM-L6-v2.gguf"
    build_command(model, source=src)  # as `make run` does: the faster exact type on this CPU
    print(f"model: {model.readlink()} (picked by `embedd model build`)", file=sys.stderr)
    rates: dict[str, dict[str, float]] = {}
    if "model" in parts:
        rates = part_model(args, model, src)
    if "foreground" in parts:
        part_foreground(args, model, tmp)
    if "e2e" in parts:
        part_e2e(args, model, tmp, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
