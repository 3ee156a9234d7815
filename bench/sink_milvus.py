"""Mirroring into Milvus Lite: upsert throughput, a full sync of a big store, and steady-state steps.

Synthetic rows: random unit vectors of 384 dimensions, ~500-character texts, ``--per-source``
chunks per file. Everything goes through embedd's own ``MilvusSink`` and ``full_sync`` into
a Milvus Lite file in a temp folder (pymilvus -> gRPC -> the in-process Lite server).

Phases, in this order, each a row of the markdown table printed at the end:

- upsert: ``--upsert-rows`` new rows in batches of ``--batch`` (a file of its own); rows/s;
- full sync, empty sink: ``full_sync`` of ``--n`` rows, what a new sink (or ``embedd sink
  sync``) does to load an existing store;
- syncer step: ``apply`` of 64 changed files into the full collection (steady state);
- search with a source prefix;
- full sync again: the sink already equal (idempotent: reads, writes nothing);
- reopen: stop the Lite server and start it again on the full file (what an idle release costs);
- full sync --rewrite: every row written again over itself;
- wipe, then full sync after the wipe: this daemon's rows deleted, then restored.

    python bench/sink_milvus.py              # 100,000 rows
    python bench/sink_milvus.py --n 20000    # quick
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe

from daemon.config import SinkConfig
from daemon.sinks.base import SinkRow, fingerprint_digest
from daemon.sinks.milvus import MilvusSink
from daemon.sinks.sync import STEP_SOURCES, full_sync

DIMS = 384
FINGERPRINT = fingerprint_digest({"model_sha256": "0" * 64, "pooling": "mean", "normalize": True})
_TEXT = (
    "the store keeps every chunk of text with its vector so a restart finds unchanged files "
    "without reading them again while edits rewrite only what moved embedding daemon watch"
)
_WORDS = _TEXT.split(" ")


def _rows(source: str, count: int, seed: int) -> list[SinkRow]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((count, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        text = (f"{source} #{i}: " + " ".join(random.choices(_WORDS, k=90)))[:500]
        out.append(SinkRow(vecs[i], text, source, i // 4 + 1, i, now, f"{seed:016x}{i:048x}"))
    return out


def _store(n: int, per_source: int, seed: int = 0) -> dict[str, list[SinkRow]]:
    random.seed(seed)
    store: dict[str, list[SinkRow]] = {}
    for f in range((n + per_source - 1) // per_source):
        source = f"share/dept{f % 20:02d}/doc{f:06d}.pdf"
        store[source] = _rows(source, min(per_source, n - f * per_source), seed * 1_000_003 + f)
    return store


def _sink(db: Path, collection: str) -> MilvusSink:
    cfg = SinkConfig(name="bench", type="milvus", uri=str(db), collection=collection, token="")
    return MilvusSink(cfg, daemon="bench", dimensions=DIMS, fingerprint=FINGERPRINT, timeout_s=120.0)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="rows in the store for the full syncs")
    parser.add_argument("--upsert-rows", type=int, default=20_000, help="rows for the upsert phase")
    parser.add_argument("--per-source", type=int, default=10, help="chunks per file")
    parser.add_argument("--batch", type=int, default=500, help="rows per upsert call in the upsert phase")
    parser.add_argument("--steps", type=int, default=5, help="syncer steps to time")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    results: list[tuple[str, str, str, str]] = []

    def report(phase: str, seconds: float, detail: str) -> None:
        results.append((phase, f"{seconds:.2f} s", detail, f"{_rss_mb():,.0f} MB"))
        print(f"{phase}: {seconds:.2f} s  {detail}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="embedd-sink-bench-") as tmp:
        # Upsert throughput, batch by batch, into a file of its own.
        up = _store(args.upsert_rows, args.per_source, seed=1)
        flat = [r for rows in up.values() for r in rows]
        sink = _sink(Path(tmp) / "upserts.db", "upserts")
        t0 = time.perf_counter()
        sink.connect()
        report(
            "connect + create collection", time.perf_counter() - t0, "first start of the Lite server included"
        )
        per_batch = []
        t0 = time.perf_counter()
        for i in range(0, len(flat), args.batch):
            b0 = time.perf_counter()
            sink.upsert(flat[i : i + args.batch])
            per_batch.append(time.perf_counter() - b0)
        up_s = time.perf_counter() - t0
        assert sink.count() == len(flat)
        report(
            f"upsert {len(flat):,} new rows, batches of {args.batch}",
            up_s,
            f"{len(flat) / up_s:,.0f} rows/s; median batch {statistics.median(per_batch) * 1000:.0f} ms",
        )
        sink.close()  # stops that Lite server
        del up, flat

        # Load an n-row store into an empty sink: what a new sink (or `embedd sink sync`) does.
        db = Path(tmp) / "bench.db"
        t0 = time.perf_counter()
        store = _store(args.n, args.per_source, seed=2)
        print(f"generated {args.n:,} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        sink = _sink(db, "fullsync")
        rep = full_sync(sink, store, store.get)
        assert rep.complete and rep.rows == args.n
        report(
            f"full sync, empty sink, {args.n:,} rows",
            rep.seconds,
            f"{rep.rows / rep.seconds:,.0f} rows/s; final flush (HNSW build) {rep.flush_seconds:.1f} s of it",
        )

        # Steady state: one syncer step of 64 changed files into the full collection.
        sources = list(store)
        rng = random.Random(3)
        step_s = []
        for k in range(args.steps):
            changed = rng.sample(sources, STEP_SOURCES)
            for j, s in enumerate(changed):
                store[s] = _rows(s, args.per_source - (j % 3), 10_000 + k * 100 + j)  # some shrink
            t0 = time.perf_counter()
            sink.apply({s: store[s] for s in changed})
            step_s.append(time.perf_counter() - t0)
        median = statistics.median(step_s)
        report(
            f"syncer step: {STEP_SOURCES} changed files ({STEP_SOURCES * args.per_source} rows)",
            median,
            f"median of {args.steps}: upsert + one filtered delete",
        )
        vec = store[sources[0]][0].vector
        t0 = time.perf_counter()
        for _ in range(10):
            sink.search(vec, 10, source_prefix="share/dept00/")
        report("search k=10, source prefix", (time.perf_counter() - t0) / 10, "mean of 10")

        rep = full_sync(sink, store, store.get)
        assert rep.unchanged == sum(map(len, store.values()))
        report(
            f"full sync, sink already equal, {args.n:,} rows",
            rep.seconds,
            "reads keys and hashes, writes nothing",
        )

        # What an idle release costs: the Lite server stops; the next step starts it on the full file.
        sink.close()
        t0 = time.perf_counter()
        sink.connect()
        reopen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = sink.count()
        report(
            "reopen the Lite file",
            reopen_s,
            f"then the first query ({n:,} rows) {time.perf_counter() - t0:.1f} s",
        )

        rep = full_sync(sink, store, store.get, rewrite=True)
        report(
            f"full sync --rewrite, sink already equal, {args.n:,} rows",
            rep.seconds,
            f"{rep.rows / rep.seconds:,.0f} rows/s (upserts over existing rows)",
        )
        t0 = time.perf_counter()
        sink.wipe()
        report(f"wipe {args.n:,} rows", time.perf_counter() - t0, "delete by daemon filter")
        rep = full_sync(sink, store, store.get)
        assert sink.count() == sum(map(len, store.values()))
        report(
            f"full sync after the wipe, {args.n:,} rows", rep.seconds, f"{rep.rows / rep.seconds:,.0f} rows/s"
        )
        sink.close()
        size = sum(p.stat().st_size for p in db.rglob("*") if p.is_file())

    print("| phase | time | detail | peak RSS so far |")
    print("| --- | --- | --- | --- |")
    for phase, t, detail, rss in results:
        print(f"| {phase} | {t} | {detail} | {rss} |")
    print(f"\nLite folder at the end: {size / 1e6:,.0f} MB; {args.per_source} chunks a file; 384 dimensions.")
    print(describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
