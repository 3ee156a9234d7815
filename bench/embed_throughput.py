"""Embedding throughput: embedd's llama.cpp embedder against sentence-transformers, same run, same chunks.

    python bench/embed_throughput.py [--chunks 500] [--repeat 3]

Builds the default model (f16 and q8_0) with embedd's converter into a temp folder, embeds a
fixed generated corpus and prints a markdown table: chunks/s, tokens/s and the ratio to
sentence-transformers (PyTorch, CPU, batch 32, 2 threads) when the `bench` extra is installed,
plus each configuration's worst cosine against the plain-numpy reference forward pass.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import chunks as make_chunks  # noqa: E402

from daemon.embed.convert import convert, default_model_source  # noqa: E402
from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder, physical_cores  # noqa: E402


@dataclass
class Row:
    name: str
    chunks_per_s: float
    tokens_per_s: float
    min_cos_ref: float | None
    vectors: np.ndarray


def timed(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    """Median seconds over ``repeat`` runs after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--reference", type=int, default=40, help="chunks checked against the numpy reference"
    )
    parser.add_argument(
        "--contention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure with a busy process on one core",
    )
    args = parser.parse_args(argv)

    texts = make_chunks(args.chunks)
    threads = physical_cores()
    src = default_model_source()
    tmp = Path(tempfile.mkdtemp(prefix="embedd-bench-"))
    f32 = convert(src, tmp / "m.f32.gguf", "f32").path
    f16 = convert(src, tmp / "m.f16.gguf", "f16").path
    q8 = convert(src, tmp / "m.q8_0.gguf", "q8_0").path

    from reference_bert import ReferenceBert

    ref_model = ReferenceBert.from_dir(src)
    ref = np.stack([ref_model.embed(t) for t in texts[: args.reference]])

    rows: list[Row] = []
    tokens_total = 0

    def bench_embedd(name: str, path: Path, settings: EmbedderSettings, per_text: bool = False) -> None:
        nonlocal tokens_total
        emb = LlamaEmbedder(path, settings)
        tokens_total = sum(emb.count_tokens(t) for t in texts)
        if per_text:

            def run() -> np.ndarray:
                return np.concatenate([emb.embed([t]) for t in texts])
        else:

            def run() -> np.ndarray:
                return emb.embed(texts)

        secs, vecs = timed(run, args.repeat)
        emb.close()
        rows.append(
            Row(
                name,
                len(texts) / secs,
                tokens_total / secs,
                float(cosines(vecs[: args.reference], ref).min()),
                vecs,
            )
        )
        print(f"  {name}: {len(texts) / secs:.1f} chunks/s", file=sys.stderr)

    bench_embedd("embedd f32 (default: flash attention, batched)", f32, EmbedderSettings(threads=threads))
    bench_embedd("embedd f16 (flash attention, batched)", f16, EmbedderSettings(threads=threads))
    bench_embedd("embedd q8_0 (flash attention, batched)", q8, EmbedderSettings(threads=threads))
    bench_embedd("embedd f32, flash attention off", f32, EmbedderSettings(threads=threads, flash_attn=False))
    bench_embedd("embedd f32, one call per text", f32, EmbedderSettings(threads=threads), per_text=True)
    if args.contention and threads > 1:
        # Another busy process on one core: llama.cpp's OpenMP workers spin and wait on each other.
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            bench_embedd(
                f"embedd f32, {threads} threads, one core busy elsewhere",
                f32,
                EmbedderSettings(threads=threads),
            )
            bench_embedd(
                f"embedd f32, {threads - 1} thread(s), one core busy elsewhere",
                f32,
                EmbedderSettings(threads=threads - 1),
            )
        finally:
            hog.kill()
            hog.wait()

    st_row: Row | None = None
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print(
            "  sentence-transformers not installed (pip install -e '.[bench]'): peer skipped", file=sys.stderr
        )
    else:
        torch.set_num_threads(threads)
        st = SentenceTransformer(str(src), device="cpu")

        def run_st() -> np.ndarray:
            return np.asarray(st.encode(texts, batch_size=32, normalize_embeddings=True))

        secs, vecs = timed(run_st, args.repeat)
        st_row = Row(
            f"sentence-transformers {torch.__version__} (batch 32)",
            len(texts) / secs,
            tokens_total / secs,
            float(cosines(vecs[: args.reference], ref).min()),
            vecs,
        )
        rows.append(st_row)
        print(f"  {st_row.name}: {st_row.chunks_per_s:.1f} chunks/s", file=sys.stderr)

    print(
        f"\nCPU: {cpu_name()}, {os.cpu_count()} logical CPUs, {threads} threads; "
        f"{len(texts)} chunks, {tokens_total} tokens ({tokens_total / len(texts):.0f} per chunk); "
        f"median of {args.repeat} runs after a warm-up.\n"
    )
    print(
        "| configuration | chunks/s | tokens/s | vs sentence-transformers | min cosine vs numpy reference |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        ratio = f"{row.chunks_per_s / st_row.chunks_per_s:.2f}x" if st_row else "n/a"
        cos = f"{row.min_cos_ref:.5f}" if row.min_cos_ref is not None else "n/a"
        print(f"| {row.name} | {row.chunks_per_s:.1f} | {row.tokens_per_s:.0f} | {ratio} | {cos} |")
    if st_row is not None:
        agree = cosines(rows[0].vectors, st_row.vectors)
        print(
            f"\n{rows[0].name} vs sentence-transformers on all {len(texts)} chunks: "
            f"min cosine {agree.min():.5f}, mean {agree.mean():.6f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
