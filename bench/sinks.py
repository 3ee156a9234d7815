"""Every sink engine side by side, in one run: a full ``sink sync``, one sync step, search, memory.

Each engine runs through embedd's own sink and ``full_sync`` in a child process of its own (so
its peak RSS is its own), on the same synthetic store: ``--chunks`` rows of 384 dimensions,
~500-character texts, ``--per-source`` chunks a file. The Milvus and Chroma servers are the
real servers on loopback (tests/servers.py), started by this script and always stopped; their
peak RSS is reported beside the client's. The Milvus server runs with its default time tick
(200 ms), as a user's would.

Phases, per engine:
- full sync: ``full_sync`` of the whole store into an empty collection (what a new sink or
  ``embedd sink sync`` does); rows/s;
- sync step: ``apply`` of ``STEP_SOURCES`` (64) changed files into the full collection, the
  steady state of a running daemon; median of ``--steps``;
- search: k=10, the mean of ``--searches`` queries, without and with a source prefix;
- peak RSS of the engine's process (and of its server).

Qdrant's local mode commits every point to SQLite one by one and slows as it grows (20,000
rows took minutes in a trial), so it is loaded with at most ``--qdrant-local-max`` rows and its
size is printed beside it; a Qdrant server is the real setup (none is on PyPI to run here).

    python bench/sinks.py                      # 100,000 chunks, every engine
    python bench/sinks.py --chunks 2000        # quick
    python bench/sinks.py --engines lancedb-local,milvus-server
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe  # noqa: E402

from daemon.config import SinkConfig  # noqa: E402
from daemon.sinks.base import SinkRow, fingerprint_digest  # noqa: E402
from daemon.sinks.registry import check_sinks, open_sink  # noqa: E402
from daemon.sinks.sync import STEP_SOURCES, full_sync  # noqa: E402

DIMS = 384
FINGERPRINT = fingerprint_digest({"model_sha256": "0" * 64, "pooling": "mean", "normalize": True})
ENGINES = {  # id -> (type, where: "file" for a local file or folder, else the server it needs)
    "milvus-lite": ("milvus", "file"),
    "milvus-server": ("milvus", "milvus"),
    "qdrant-local": ("qdrant", "file"),
    "chroma-local": ("chroma", "file"),
    "chroma-server": ("chroma", "chroma"),
    "lancedb-local": ("lancedb", "file"),
}
_TEXT = (
    "the store keeps every chunk of text with its vector so a restart finds unchanged files "
    "without reading them again while edits rewrite only what moved embedding daemon watch"
)
_WORDS = _TEXT.split(" ")


def _rows(source: str, count: int, seed: int) -> list[SinkRow]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((count, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    words = random.Random(seed)
    now = int(time.time() * 1000)
    return [
        SinkRow(
            vecs[i],
            (f"{source} #{i}: " + " ".join(words.choices(_WORDS, k=90)))[:500],
            source,
            i // 4 + 1,
            i,
            now,
            f"{seed:016x}{i:048x}",
        )
        for i in range(count)
    ]


def _store(n: int, per_source: int) -> dict[str, list[SinkRow]]:
    store: dict[str, list[SinkRow]] = {}
    for f in range((n + per_source - 1) // per_source):
        source = f"share/dept{f % 20:02d}/doc{f:06d}.pdf"
        store[source] = _rows(source, min(per_source, n - f * per_source), 1_000_003 + f)
    return store


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(engine: str, uri: str, args: argparse.Namespace) -> dict[str, Any]:
    """One engine's phases, in this (child) process; returns the figures."""
    kind = ENGINES[engine][0]
    cfg = SinkConfig(name="bench", type=kind, uri=uri, collection="bench", timeout_s=600.0)
    check_sinks([cfg])
    n = args.chunks if engine != "qdrant-local" else min(args.chunks, args.qdrant_local_max)
    store = _store(n, args.per_source)
    sink = open_sink(cfg, daemon="bench", dimensions=DIMS, fingerprint=FINGERPRINT)
    t0 = time.perf_counter()
    sink.connect()
    connect_s = time.perf_counter() - t0
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            print(f"  {engine}: {done:,}/{total:,} files", file=sys.stderr, flush=True)

    report = full_sync(sink, store, store.get, progress=progress)
    assert report.complete and report.rows == n, report
    assert sink.count() == n

    sources = list(store)
    rng = random.Random(3)
    step_s = []
    for k in range(args.steps):
        changed = rng.sample(sources, min(STEP_SOURCES, len(sources)))
        for j, s in enumerate(changed):  # new text and vectors; some files shrink by a chunk
            store[s] = _rows(s, max(1, len(store[s]) - (j % 2)), 50_000_000 + k * 1000 + j)
        t0 = time.perf_counter()
        sink.apply({s: store[s] for s in changed})
        step_s.append(time.perf_counter() - t0)
    assert sink.count() == sum(map(len, store.values()))

    queries = np.random.default_rng(7).standard_normal((args.searches, DIMS)).astype(np.float32)
    sink.search(queries[0], 10)  # the first search may load or warm an index
    t0 = time.perf_counter()
    for q in queries:
        assert len(sink.search(q, 10)) == 10
    search_s = (time.perf_counter() - t0) / len(queries)
    t0 = time.perf_counter()
    for q in queries:
        assert len(sink.search(q, 10, source_prefix="share/dept07/")) == 10
    prefix_s = (time.perf_counter() - t0) / len(queries)
    sink.close()
    return {
        "engine": engine,
        "rows": n,
        "connect_s": connect_s,
        "sync_s": report.seconds,
        "rows_per_s": n / report.seconds,
        "step_s": statistics.median(step_s),
        "step_rows": sum(len(store[s]) for s in changed),
        "search_ms": search_s * 1000,
        "prefix_ms": prefix_s * 1000,
        "rss_mb": _rss_mb(),
    }


def _run_engine(engine: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from servers import ChromaTestServer, MilvusTestServer

    where = ENGINES[engine][1]
    server: Any = None
    if where == "milvus":
        server = MilvusTestServer(tmp / "milvus-server", time_tick_ms=200)
    elif where == "chroma":
        server = ChromaTestServer(tmp / "chroma-server")
    try:
        if server is not None:
            server.start()
            uri = server.uri
        else:
            uri = str(tmp / {"milvus-lite": "lite.db"}.get(engine, engine))
        cmd = [sys.executable, __file__, "--child", engine, "--uri", uri, *sys.argv[1:]]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{engine} failed (exit {done.returncode})")
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        figures["server_rss_mb"] = server.rss_peak_mb() if server is not None else None
        return figures
    finally:
        if server is not None:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000, help="rows in the store")
    parser.add_argument("--per-source", type=int, default=10, help="chunks a file")
    parser.add_argument("--steps", type=int, default=3, help="sync steps to time (the median is shown)")
    parser.add_argument("--searches", type=int, default=20, help="searches to time")
    parser.add_argument("--engines", default=",".join(ENGINES), help="which, comma-separated")
    parser.add_argument("--qdrant-local-max", type=int, default=10_000, help="rows for Qdrant's local mode")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    if args.child:
        print(json.dumps(child(args.child, args.uri, args)), flush=True)
        return 0

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {', '.join(sorted(unknown))}; known: {', '.join(ENGINES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="embedd-sinks-bench-") as tmp:
        for engine in engines:
            print(f"{engine} ...", file=sys.stderr, flush=True)
            results.append(_run_engine(engine, args, Path(tmp)))
            r = results[-1]
            print(
                f"{engine}: {r['rows']:,} rows in {r['sync_s']:.1f} s ({r['rows_per_s']:,.0f} rows/s)",
                file=sys.stderr,
                flush=True,
            )

    print(
        f"\n{args.chunks:,} chunks of {DIMS} dimensions, {args.per_source} a file; "
        f"a sync step is {STEP_SOURCES} changed files; search k=10."
    )
    print(describe())
    print(
        "\n| engine | rows | full sync | rows/s | sync step | search | search, prefix | peak RSS "
        "(client) | peak RSS (server) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        server = f"{r['server_rss_mb']:,.0f} MB" if r["server_rss_mb"] is not None else "-"
        print(
            f"| {r['engine']} | {r['rows']:,} | {r['sync_s']:.1f} s | {r['rows_per_s']:,.0f} | "
            f"{r['step_s']:.2f} s ({r['step_rows']} rows) | {r['search_ms']:.1f} ms | "
            f"{r['prefix_ms']:.1f} ms | {r['rss_mb']:,.0f} MB | {server} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
