"""Embedding throughput: embedd's llama.cpp embedder against sentence-transformers, same run, same chunks.

    python bench/embed_throughput.py [--chunks 500] [--repeat 3]
    python bench/embed_throughput.py --quick          # 40 chunks, one run: checks it works

Builds the default model the way `embedd model build` does (f32 and f16 timed, the faster
kept), plus each type explicitly, into a temp folder; embeds a fixed generated corpus with
each configuration in its own fresh process (so each gets its own OpenMP settings) and prints
a markdown table: chunks/s, tokens/s, the ratio to sentence-transformers (PyTorch, CPU, batch
32, one thread per physical core, its own default OpenMP settings) when the `bench` extra is
installed, and each configuration's worst cosine against the plain-numpy reference forward
pass. The machine (CPU model and flags, llama.cpp's build features, load) heads the output.
Contention (another busy process, the daemon's priority, end to end) is `bench/contention.py`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

# Captured before anything here loads llama.cpp (which sets OMP_WAIT_POLICY in this process).
BASE_ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

from corpus import chunks as make_chunks  # noqa: E402
from interleave import Resident, add_pool_arguments, take_turns  # noqa: E402
from machine import describe, peer_python  # noqa: E402
from worker import measure  # noqa: E402

from daemon.embed.convert import convert, default_model_source  # noqa: E402
from daemon.embed.embedder import physical_cores  # noqa: E402
from daemon.embed.pool import DEFAULT_POLL  # noqa: E402

# libgomp's own default spin count: what embedd ran with before it set OMP_WAIT_POLICY=passive.
SPINNING = {"GOMP_SPINCOUNT": "300000"}
# The rows of llama.cpp built with GGML_OPENMP=OFF (`--pool-python`), which runs on ggml's pool.
POOL = "ggml pool"
PEER = "sentence-transformers"


def other_build(python: str) -> str:
    """llama.cpp's build features as ``python`` (another venv's build) sees them."""
    proc = subprocess.run(
        [python, str(ROOT / "bench" / "machine.py")], env=BASE_ENV, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip().rpartition("; ")[2]


@dataclass
class Row:
    name: str
    results: list[dict[str, Any]]
    min_cos_ref: float | None
    vectors: np.ndarray

    @property
    def seconds(self) -> float:
        """The median of every timed run of every round."""
        return statistics.median(t for r in self.results for t in r["seconds"])

    @property
    def chunks_per_s(self) -> float:
        return float(self.results[0]["chunks"] / self.seconds)

    def tokens_per_s(self, tokens: int) -> float:
        return tokens / self.seconds

    @property
    def cpu_ms_per_chunk(self) -> float | None:
        cpu = [t for r in self.results for t in r.get("cpu_seconds", [])]
        return statistics.median(cpu) * 1000 / self.results[0]["chunks"] if cpu else None

    @property
    def query_ms(self) -> float | None:
        times = [t for r in self.results for t in r.get("query_ms", [])]
        return statistics.median(times) if times else None


@dataclass
class Config:
    name: str
    spec: dict[str, Any]
    env: dict[str, str] | None = None
    python: str | None = None  # None: this one (the OpenMP build)


def interleaved(
    args: argparse.Namespace,
    configs: list[Config],
    tmp: Path,
    results: dict[str, list[dict[str, Any]]],
    vectors: dict[str, Path],
) -> int:
    """Every configuration resident in its own process, one timed run each in turn (``--interleave``).

    Fills ``results`` (one entry per round, as the sequential rounds do) and ``vectors``; returns
    the corpus' token count.
    """
    residents: list[Resident] = []
    try:
        for i, config in enumerate(configs):
            spec = {"chunks": args.chunks, **config.spec}
            env = {**BASE_ENV, **(config.env or {})}
            residents.append(Resident(config.name, spec, env, config.python, tmp / f"worker-{i}.log"))
        # "One core busy" as in bench/contention.py: another process spinning in pure Python, nice 0.
        hog = (
            subprocess.Popen([sys.executable, "-c", "while True: pass"], env=BASE_ENV) if args.busy else None
        )
        try:
            runs = take_turns(
                residents, args.rounds, progress=lambda line: print(f"  {line}", file=sys.stderr)
            )
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        for resident in residents:
            resident.ask(f"save {vectors[resident.name]}")
            queries = resident.ask(f"queries {args.queries}")["query_ms"] if args.queries else []
            got = runs[resident.name]
            results[resident.name] = [
                {"chunks": got.chunks, "seconds": [s], "cpu_seconds": [c], "threads": [t], "query_ms": []}
                for s, c, t in zip(got.seconds, got.cpu_seconds, got.threads, strict=True)
            ]
            results[resident.name][0].update(query_ms=queries, torch=resident.hello.get("torch", ""))
    finally:
        for resident in residents:
            resident.close()
    return int(residents[0].hello.get("tokens", 0))


def paired(row: Row, peer: Row) -> float:
    """The median over rounds of ``row``'s rate over ``peer``'s in the same round."""

    def per_s(r: dict[str, Any]) -> float:
        return float(r["chunks"] / statistics.median(r["seconds"]))

    return statistics.median(per_s(a) / per_s(b) for a, b in zip(row.results, peer.results, strict=True))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--reference", type=int, default=40, help="chunks checked against the numpy reference"
    )
    add_pool_arguments(parser)
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="keep every configuration resident in its own process and time one run of each in turn, "
        "--rounds times (bench/interleave.py): for comparing builds on a machine whose load moves",
    )
    parser.add_argument(
        "--only", help="only the configurations whose name contains one of these (comma-separated)"
    )
    parser.add_argument(
        "--busy", action="store_true", help="with --interleave: one core busy elsewhere while they run"
    )
    parser.add_argument("--queries", type=int, default=50, help="short queries timed one by one per run")
    parser.add_argument("--quick", action="store_true", help="40 chunks, one run, 10 checked: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.repeat, args.reference = 40, 1, 10
    print(describe(llama=True), file=sys.stderr)

    import structlog

    from daemon.commands.model import build_command

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    texts = make_chunks(args.chunks)
    threads = physical_cores()
    src = default_model_source()
    tmp = Path(tempfile.mkdtemp(prefix="embedd-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # models and stores: hundreds of MB
    build_command(tmp / "default.gguf", source=src)  # the quick start's pick, timed here
    picked = (tmp / "default.gguf").readlink().name.split(".")[-2]
    models = {kind: convert(src, tmp / f"m.{kind}.gguf", kind).path for kind in ("f32", "f16", "q8_0")}

    from reference_bert import ReferenceBert

    ref_model = ReferenceBert.from_dir(src)
    ref = np.stack([ref_model.embed(t) for t in texts[: args.reference]])

    configs = [
        Config(
            f"embedd default ({picked}, picked by `model build`; threads adapt)",
            {"system": "embedd", "model": str(tmp / "default.gguf"), "threads": 0},
        ),
        *(
            Config(
                f"embedd {kind}, {threads} threads",
                {"system": "embedd", "model": str(path), "threads": threads},
            )
            for kind, path in models.items()
            if not args.pool_python or kind == picked
        ),
        Config(
            f"embedd {picked}, {threads} threads, OpenMP spinning (before this release)",
            {"system": "embedd", "model": str(models[picked]), "threads": threads},
            SPINNING,
        ),
    ]
    if not args.pool_python:
        configs += [
            Config(
                f"embedd {picked}, flash attention off",
                {"system": "embedd", "model": str(models[picked]), "threads": threads, "flash_attn": False},
            ),
            Config(
                f"embedd {picked}, one call per text",
                {"system": "embedd", "model": str(models[picked]), "threads": threads, "per_text": True},
            ),
        ]
    else:
        configs.append(
            Config(
                f"{POOL}: embedd default ({picked}; threads adapt, poll {DEFAULT_POLL})",
                {"system": "embedd", "model": str(tmp / "default.gguf"), "threads": 0},
                python=args.pool_python,
            )
        )
        configs += [
            Config(
                f"{POOL}: embedd {picked}, {threads} threads, poll {poll}",
                {"system": "embedd", "model": str(models[picked]), "threads": threads, "poll": poll},
                python=args.pool_python,
            )
            for poll in args.polls
        ]
        configs.append(
            Config(
                f"{POOL}: embedd {picked}, {threads} threads, a new pool per batch",
                {"system": "embedd", "model": str(models[picked]), "threads": threads, "poll": None},
                python=args.pool_python,
            )
        )
    peer_py = peer_python(args.pool_python)
    if peer_py is False:
        print(
            "  sentence-transformers not installed (pip install -e '.[bench]'): peer skipped", file=sys.stderr
        )
    else:
        configs.append(Config(PEER, {"system": "st", "model": str(src), "threads": threads}, python=peer_py))

    if args.only:
        keep = args.only.split(",")
        configs = [c for c in configs if c.name == PEER or any(k in c.name for k in keep)]
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    vectors: dict[str, Path] = {c.name: tmp / f"vectors-{i}.npy" for i, c in enumerate(configs)}
    tokens = 0
    if args.interleave:
        tokens = interleaved(args, configs, tmp, results, vectors)
    # Every configuration once per round, the rounds one after the other: the builds alternate,
    # so a machine whose other tenants come and go weighs on all of them alike.
    for rnd in range(0 if args.interleave else args.rounds):
        for config in configs:
            spec = {
                "chunks": args.chunks,
                "repeat": args.repeat,
                "vectors": str(vectors[config.name]),
                "queries": args.queries,
                **config.spec,
            }
            result = measure(spec, {**BASE_ENV, **(config.env or {})}, python=config.python)
            tokens = result.get("tokens", tokens)
            results[config.name].append(result)
            per_s = result["chunks"] / statistics.median(result["seconds"])
            print(
                f"  round {rnd + 1}, {config.name}: {per_s:.1f} chunks/s, threads {result['threads']} "
                f"(load {os.getloadavg()[0]:.2f})",
                file=sys.stderr,
            )
    rows: list[Row] = []
    for config in configs:
        got = np.load(vectors[config.name])
        rows.append(
            Row(config.name, results[config.name], float(cosines(got[: args.reference], ref).min()), got)
        )
    default = rows[0]
    peer = rows[-1] if rows[-1].name == PEER else None
    if peer is not None:
        peer.name = f"sentence-transformers {peer.results[0].get('torch', '')} (batch 32, {threads} threads)"

    print(
        f"\n{describe(llama=True)}\n\n"
        f"{len(texts)} chunks, {tokens} tokens ({tokens / len(texts):.0f} per chunk); "
        + (
            f"{args.rounds} rounds of one run of each configuration in turn, each resident in its own "
            "process after a warm-up (`--interleave`); medians over the rounds"
            f"{'; one core busy (a pure-Python loop at nice 0)' if args.busy else ''}.\n"
            if args.interleave
            else f"median of {args.repeat} run(s) after a warm-up, each configuration in its own process.\n"
        )
    )
    print(
        "| configuration | chunks/s | tokens/s | vs sentence-transformers (median of the rounds' ratios) | "
        "short query, ms | CPU ms per chunk | chunks/s each round | min cosine vs numpy reference |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for row in rows:
        ratio = f"{row.chunks_per_s / peer.chunks_per_s:.2f}x" if peer else "n/a"
        if peer and len(row.results) > 1:
            # Each round's own ratio, then their median: what drifts between rounds cancels.
            ratio += f" ({paired(row, peer):.2f}x)"
        cos = f"{row.min_cos_ref:.5f}" if row.min_cos_ref is not None else "n/a"
        query = f"{row.query_ms:.1f}" if row.query_ms is not None else "n/a"
        cpu = f"{row.cpu_ms_per_chunk:.1f}" if row.cpu_ms_per_chunk is not None else "n/a"
        each = ", ".join(f"{r['chunks'] / statistics.median(r['seconds']):.1f}" for r in row.results)
        print(
            f"| {row.name} | {row.chunks_per_s:.1f} | {row.tokens_per_s(tokens):.0f} | {ratio} | {query} | "
            f"{cpu} | {each} | {cos} |"
        )
    pool_rows = [r for r in rows if r.name.startswith(POOL)]
    if pool_rows:
        same = all(np.array_equal(r.vectors, default.vectors) for r in pool_rows)
        worst = max(float(np.abs(r.vectors - default.vectors).max()) for r in pool_rows)
        print(
            f"\n{POOL} ({other_build(args.pool_python)}): vectors "
            f"{'bit-identical to' if same else f'within {worst:.1e} of'} the OpenMP build's on all "
            f"{len(texts)} chunks."
        )
        if peer is not None:
            print(
                f"{pool_rows[0].name} / sentence-transformers: "
                f"{pool_rows[0].chunks_per_s / peer.chunks_per_s:.2f}x "
                "(goal: at least 1.0x on an idle machine)"
            )
    if peer is not None:
        agree = cosines(default.vectors, peer.vectors)
        print(
            f"\nembedd default / sentence-transformers: {default.chunks_per_s / peer.chunks_per_s:.2f}x "
            f"(goal: at least 1.0x on an idle machine); their vectors on all {len(texts)} chunks: "
            f"min cosine {agree.min():.5f}, mean {agree.mean():.6f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
