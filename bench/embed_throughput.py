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
from machine import describe  # noqa: E402
from worker import measure  # noqa: E402

from daemon.embed.convert import convert, default_model_source  # noqa: E402
from daemon.embed.embedder import physical_cores  # noqa: E402

# libgomp's own default spin count: what embedd ran with before it set OMP_WAIT_POLICY=passive.
SPINNING = {"GOMP_SPINCOUNT": "300000"}


@dataclass
class Row:
    name: str
    result: dict[str, Any]
    min_cos_ref: float | None
    vectors: np.ndarray

    @property
    def chunks_per_s(self) -> float:
        return float(self.result["chunks"] / statistics.median(self.result["seconds"]))

    def tokens_per_s(self, tokens: int) -> float:
        return tokens / statistics.median(self.result["seconds"])


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

    rows: list[Row] = []
    tokens = 0

    def run(name: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> Row:
        nonlocal tokens
        vectors = tmp / f"vectors-{len(rows)}.npy"
        spec = {"chunks": args.chunks, "repeat": args.repeat, "vectors": str(vectors), **spec}
        result = measure(spec, {**BASE_ENV, **(env or {})})
        tokens = result.get("tokens", tokens)
        got = np.load(vectors)
        row = Row(name, result, float(cosines(got[: args.reference], ref).min()), got)
        rows.append(row)
        print(f"  {name}: {row.chunks_per_s:.1f} chunks/s, threads {result['threads']}", file=sys.stderr)
        return row

    default = run(
        f"embedd default ({picked}, picked by `model build`; threads adapt)",
        {"system": "embedd", "model": str(tmp / "default.gguf"), "threads": 0},
    )
    for kind, path in models.items():
        run(f"embedd {kind}, {threads} threads", {"system": "embedd", "model": str(path), "threads": threads})
    run(
        f"embedd {picked}, {threads} threads, OpenMP spinning (before this release)",
        {"system": "embedd", "model": str(models[picked]), "threads": threads},
        SPINNING,
    )
    run(
        f"embedd {picked}, flash attention off",
        {"system": "embedd", "model": str(models[picked]), "threads": threads, "flash_attn": False},
    )
    run(
        f"embedd {picked}, one call per text",
        {"system": "embedd", "model": str(models[picked]), "threads": threads, "per_text": True},
    )

    peer: Row | None = None
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        print(
            "  sentence-transformers not installed (pip install -e '.[bench]'): peer skipped", file=sys.stderr
        )
    else:
        peer = run(
            "sentence-transformers (batch 32)", {"system": "st", "model": str(src), "threads": threads}
        )
        peer.name = f"sentence-transformers {peer.result.get('torch', '')} (batch 32, {threads} threads)"

    print(
        f"\n{describe(llama=True)}\n\n"
        f"{len(texts)} chunks, {tokens} tokens ({tokens / len(texts):.0f} per chunk); "
        f"median of {args.repeat} run(s) after a warm-up, each configuration in its own process.\n"
    )
    print(
        "| configuration | chunks/s | tokens/s | vs sentence-transformers | min cosine vs numpy reference |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        ratio = f"{row.chunks_per_s / peer.chunks_per_s:.2f}x" if peer else "n/a"
        cos = f"{row.min_cos_ref:.5f}" if row.min_cos_ref is not None else "n/a"
        print(f"| {row.name} | {row.chunks_per_s:.1f} | {row.tokens_per_s(tokens):.0f} | {ratio} | {cos} |")
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
