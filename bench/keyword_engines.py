"""The keyword index's engine choice, measured: SQLite FTS5 (the sidecar embedd uses) against bm25s.

    python bench/keyword_engines.py               # 100,000 chunks
    python bench/keyword_engines.py --chunks 20000

For each engine, on the same chunks (real English text from bench/corpus.py, 50 chunks a file):
the full build, the size, the query latency (p50/p95 over ``QUERIES``, 100 best), and what a
one-file edit costs (50 chunks replaced). bm25s has no incremental update, so its edit is a rebuild.
bm25s is not a dependency: install it somewhere for this run (``pip install --target DIR bm25s``
and set PYTHONPATH); without it only FTS5 is measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corpus import chunks as corpus_chunks
from machine import machine_line
from servekit import QUERIES

from daemon.query.keyword import parse
from daemon.store.keyword import KeywordIndex

PER_FILE = 50


@dataclass
class R:
    id: str
    content: str
    source: str
    chunk: int
    hash: str
    section: str | None = None
    title: str | None = None


def corpus(n: int) -> dict[str, list[R]]:
    texts = corpus_chunks(min(n, 2000))
    out: dict[str, list[R]] = {}
    for i in range(n):
        f, c = divmod(i, PER_FILE)
        src = f"inbox/doc{f:05}.txt"
        t = f"{texts[i % len(texts)]} [{f}:{c}]"
        out.setdefault(src, []).append(R(f"{src}#{c}", t, src, c, f"{i:064x}"))
    return out


def pct(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"p50 {statistics.median(ms):.2f} ms, p95 {ms[int(len(ms) * 0.95) - 1]:.2f} ms"


def fts5(sources: dict[str, list[R]], root: Path) -> None:
    path = root / "bench.kw"
    states = dict.fromkeys(sources, 0)
    t0 = time.perf_counter()
    index = KeywordIndex.open(path, sources, states)
    build = time.perf_counter() - t0
    print(f"fts5: build {build:.1f} s, size {index.size_bytes() / 1e6:.1f} MB")
    ms = []
    for _ in range(5):
        for q in QUERIES:
            t = time.perf_counter()
            found = index.search(parse(q).match(), 100)
            index.mark(parse(q).match(), [h.rowid for h in found[:10]])
            ms.append((time.perf_counter() - t) * 1000)
    print(f"fts5: query (100 best + 10 snippets) {pct(ms)}")
    edits = []
    victim = next(iter(sources))
    for j in range(10):
        rows = [
            R(r.id, r.content + f" edit{j}", r.source, r.chunk, r.hash[:-4] + f"{j:04}")
            for r in sources[victim]
        ]
        t = time.perf_counter()
        index.replace(victim, rows, 1)
        edits.append((time.perf_counter() - t) * 1000)
    print(f"fts5: one-file edit ({PER_FILE} chunks) {pct(edits)}")
    t = time.perf_counter()
    reopened = KeywordIndex.open(path, sources, states)
    print(f"fts5: reopen and check every source's signature {time.perf_counter() - t:.2f} s")
    reopened.close()
    index.close()


def bm25s_engine(sources: dict[str, list[R]]) -> None:
    try:
        import bm25s  # type: ignore[import-not-found]
    except ImportError:
        print("bm25s: not installed, skipped")
        return
    texts = [r.content for rows in sources.values() for r in rows]
    t0 = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    build = time.perf_counter() - t0
    print(f"bm25s: build {build:.1f} s (in memory; a one-file edit is a rebuild: {build * 1000:.0f} ms)")
    ms = []
    for _ in range(5):
        for q in QUERIES:
            t = time.perf_counter()
            retriever.retrieve(
                bm25s.tokenize([q], stopwords="en", show_progress=False), k=100, show_progress=False
            )
            ms.append((time.perf_counter() - t) * 1000)
    print(f"bm25s: query (100 best) {pct(ms)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunks", type=int, default=100_000)
    args = ap.parse_args()
    print(machine_line())
    sources = corpus(args.chunks)
    print(f"{args.chunks:,} chunks in {len(sources):,} files")
    with tempfile.TemporaryDirectory() as tmp:
        fts5(sources, Path(tmp))
    bm25s_engine(sources)


if __name__ == "__main__":
    main()
