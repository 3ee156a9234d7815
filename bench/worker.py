"""One model-only measurement in a fresh process: ``python bench/worker.py SPEC_JSON``.

Each configuration gets its own process because what is measured is set when a process
starts: OpenMP reads its wait policy once when the library loads (the benchmarks pass
``GOMP_SPINCOUNT`` in the environment), priority can be lowered but not raised back, and
PyTorch and llama.cpp would otherwise share one process's threads. Prints one JSON object:

    {"seconds": [...], "cpu_seconds": [...], "chunks": N, "tokens": T, "threads": [...], "changes": K,
     "query_ms": [...]}

``cpu_seconds`` is the CPU time of every thread of the process during each timed run (a
waiting thread that spins counts; one that sleeps does not).

``threads`` is the embedder's thread count after each timed run (it moves when adaptive).
SPEC keys: system ("embedd" or "st"), model (a GGUF for embedd, the Hugging Face folder for
st), chunks, repeat, threads (0 adapts), flash_attn, per_text, nice, vectors (an .npy path to
save the last run's vectors to, or null), poll (embedd on a llama.cpp without OpenMP: ggml's
thread pools' poll level, or null for ggml's throw-away pool per batch; absent: the default),
queries (that many short queries embedded one by one after the timed runs, each timed in
milliseconds: ``query_ms``).

``measure`` runs it with any Python, so one benchmark can compare two builds of llama.cpp
installed in two virtual environments.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import chunks as make_chunks  # noqa: E402

# A function running the timed work once, and one reporting facts about the system after it.
Runner = tuple[Callable[[], np.ndarray], Callable[[], dict[str, Any]]]
# A short search query (10 tokens with [CLS] and [SEP]).
QUERY = "how do I rotate the API keys"


def _embedd(spec: dict[str, Any], texts: list[str]) -> Runner:
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder

    pool = {"pool_poll": spec["poll"]} if "poll" in spec else {}
    emb = LlamaEmbedder(
        Path(spec["model"]),
        EmbedderSettings(threads=spec.get("threads", 0), flash_attn=spec.get("flash_attn", True), **pool),
    )
    tokens = sum(emb.count_tokens(t) for t in texts)

    def run() -> np.ndarray:
        if spec.get("per_text"):
            return np.concatenate([emb.embed([t]) for t in texts])
        return emb.embed(texts)

    def query() -> None:
        emb.embed([QUERY])

    def facts() -> dict[str, Any]:
        return {
            "tokens": tokens,
            "threads_now": emb.threads,
            "changes": emb.thread_policy.changes,
            "openmp": emb.openmp,
            "query": query,
        }

    return run, facts


def _sentence_transformers(spec: dict[str, Any], texts: list[str]) -> Runner:
    import torch
    from sentence_transformers import SentenceTransformer

    from daemon.embed.embedder import physical_cores

    torch.set_num_threads(spec.get("threads") or physical_cores())
    model = SentenceTransformer(spec["model"], device="cpu")

    def run() -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=32, normalize_embeddings=True))

    def query() -> None:
        model.encode([QUERY], normalize_embeddings=True)

    def facts() -> dict[str, Any]:
        return {"threads_now": torch.get_num_threads(), "torch": torch.__version__, "query": query}

    return run, facts


def main(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("nice"):
        from daemon.service.priority import lower_priority

        # As the daemon does at start: before any thread exists, so all of them inherit it.
        lower_priority(spec["nice"], all_threads=True)
    texts = make_chunks(spec["chunks"])
    run, facts = (_embedd if spec["system"] == "embedd" else _sentence_transformers)(spec, texts)
    vectors = run()  # warm-up; an adaptive embedder also settles here
    seconds, cpu, threads = [], [], []
    for _ in range(spec.get("repeat", 3)):
        t0, c0 = time.perf_counter(), time.process_time()
        vectors = run()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        threads.append(facts()["threads_now"])
    if spec.get("vectors"):
        np.save(spec["vectors"], vectors)
    found = facts()
    query = found.pop("query")
    query_ms = []
    for _ in range(spec.get("queries", 0)):
        t0 = time.perf_counter()
        query()
        query_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "chunks": len(texts),
        "threads": threads,
        "query_ms": query_ms,
        **found,
    }


def measure(
    spec: dict[str, Any], env: dict[str, str], *, timeout: float = 3600, python: str | None = None
) -> dict[str, Any]:
    """Run one SPEC in a fresh process of ``python`` (default: this one) with exactly ``env``."""
    import subprocess

    proc = subprocess.run(
        [python or sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}) for {spec}:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def serve(spec: dict[str, Any]) -> None:
    """Stay resident: load once, warm up, then answer one command a line on stdin, one JSON line each.

    ``run`` times one run of the chunks; ``queries N`` times N short queries; ``save PATH``
    writes the last vectors; anything else ends it. ``bench/interleave.py`` drives it, so that
    configurations in separate processes take turns a few seconds apart.
    """
    if spec.get("nice"):
        from daemon.service.priority import lower_priority

        lower_priority(spec["nice"], all_threads=True)
    texts = make_chunks(spec["chunks"])
    run, facts = (_embedd if spec["system"] == "embedd" else _sentence_transformers)(spec, texts)
    vectors = run()
    found = facts()
    query = found.pop("query")
    print(json.dumps({"ok": True, "chunks": len(texts), **found}), flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "run":
            t0, c0 = time.perf_counter(), time.process_time()
            vectors = run()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(
                json.dumps(
                    {"ok": True, "seconds": seconds, "cpu_seconds": cpu, "threads": facts()["threads_now"]}
                ),
                flush=True,
            )
        elif command == "queries":
            times = []
            for _ in range(int(arg)):
                t0 = time.perf_counter()
                query()
                times.append((time.perf_counter() - t0) * 1000)
            print(json.dumps({"ok": True, "query_ms": times}), flush=True)
        elif command == "save":
            np.save(arg, vectors)
            print(json.dumps({"ok": True}), flush=True)
        else:
            return


if __name__ == "__main__":
    # structlog's default output goes to stdout: keep stdout for the JSON lines.
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if sys.argv[1] == "--serve":
        serve(json.loads(sys.argv[2]))
    else:
        print(json.dumps(main(json.loads(sys.argv[1]))))
