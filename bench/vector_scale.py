"""Vector search at scale: exact against the approximate index (``daemon/store/ann.py``).

Three measurements, each printed as a markdown table with the machine line:

- ``exact``: exact search p50/p95 at several store sizes (where the index starts to pay:
  ``daemon.store.ann.MIN_ROWS``), and the cost of ranking a filter's rows exactly
  (``daemon.query.rank.SUBSET_ROWS``);
- ``scale``: a store of ``--n`` chunks (default 1,000,000) of clustered synthetic unit vectors
  (a centre per 500 chunks plus noise, as embeddings cluster; uniform random vectors have no
  neighbours worth finding): the index's build (rate, progress), its size, search p50/p95
  through ``vector_top`` (the daemon's path) against exact, recall@10 against exact, filtered
  searches, a new chunk found at once and a deleted one never, through a compaction; with
  ``--hybrid`` also hybrid search (``search_snapshot``) with the keyword index;
- ``real``: the same recall and latency on the real model's vectors of ``--n`` sentences
  of the CACM and CISI collections (``bench/data``, see ``bench/ircollections.py``);
- ``sweep``: faiss graphs built directly over the ``scale`` vectors for each ``--m`` (and
  ``--quantizer``), recall@10 and p50 at each efSearch, re-scoring the daemon's 61 candidates
  or all of efSearch's (where the recall is lost: the graph walk or the candidate cut).

    python bench/vector_scale.py exact
    python bench/vector_scale.py scale --n 1000000 [--hybrid]
    python bench/vector_scale.py real --n 20000
    python bench/vector_scale.py sweep --n 300000 --m 16,32 --intrinsic 16
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import machine_line
from daemon.query.rank import top_k, vector_top
from daemon.query.search import SearchOptions, search_snapshot
from daemon.store import ann
from daemon.store.ann import ann_path
from daemon.store.format import content_hash
from daemon.store.snapshot import Snapshot
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

DIMS = 384
PER_FILE = 100
FINGERPRINT = Fingerprint("0" * 64, "mean", True, 500, 50)
ROOT = Path(__file__).resolve().parent.parent
DATA_DIRS = (ROOT / "bench" / "data", Path("/work/main/bench/data"))
WORDS = [
    "index", "store", "vector", "chunk", "query", "folder", "daemon", "search", "file", "text", "model",
    "graph", "cluster", "neighbour", "recall", "latency", "memory", "journal", "cache", "snapshot",
    "filter", "prefix", "keyword", "hybrid", "fusion", "rank", "score",
]  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clustered:
    """Unit vectors around random centres (one per 500 vectors).

    ``intrinsic`` None: the noise is isotropic and as large as the centre, so within a cluster
    the vectors are near-ties in all 384 dimensions (the hardest case for a graph; text
    embeddings are not like that). ``intrinsic`` r: each cluster spreads along r directions of
    its own plus a little isotropic noise, closer to how embeddings of related texts vary.
    """

    def __init__(self, n: int, seed: int = 1, intrinsic: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.intrinsic = intrinsic
        centres = self.rng.standard_normal((max(n // 500, 10), DIMS)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        if intrinsic:
            bases = self.rng.standard_normal((len(centres), intrinsic, DIMS)).astype(np.float32)
            self.bases = bases / np.sqrt(DIMS)

    def take(self, m: int) -> np.ndarray:
        picks = self.rng.integers(0, len(self.centres), m)
        x = self.centres[picks]
        if self.intrinsic:
            for start in range(0, m, 5_000):
                part = picks[start : start + 5_000]
                z = self.rng.standard_normal((len(part), self.intrinsic)).astype(np.float32) / np.sqrt(2.0)
                x[start : start + 5_000] += np.einsum("mr,mrd->md", z, self.bases[part])
            x += self.rng.standard_normal((m, DIMS)).astype(np.float32) * (0.2 / np.sqrt(DIMS))
        else:
            x = x + self.rng.standard_normal((m, DIMS)).astype(np.float32) / np.sqrt(DIMS)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.95) - 1] * 1e3


def timed(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return percentiles(times)


def truth(matrix: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[set[int]]:
    """The exact top ``k`` of each query (one BLAS product per block of rows: a benchmark's shortcut)."""
    scores = np.empty((len(queries), len(matrix)), dtype=np.float32)
    for start in range(0, len(matrix), 100_000):
        scores[:, start : start + 100_000] = queries @ matrix[start : start + 100_000].T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [set(row.tolist()) for row in best]


def recall(snap: Snapshot, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> float:
    exact = truth(snap.matrix, queries, k, mask)
    found = sum(
        len({r for r, _ in vector_top(snap, q, k, mask=mask)} & t)
        for q, t in zip(queries, exact, strict=True)
    )
    return found / (k * len(queries))


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n\n{machine_line()}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


# ----- exact -----


def cmd_exact(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    gen = Clustered(max(sizes))
    matrix = np.empty((max(sizes), DIMS), dtype=np.float32)
    for start in range(0, len(matrix), 100_000):
        matrix[start : start + 100_000] = gen.take(min(100_000, len(matrix) - start))
    queries = gen.take(args.queries)
    rows = []
    for n in sizes:
        p50, p95 = timed(lambda q, n=n: top_k(matrix[:n], q, 10, normalized=True), queries)
        rows.append([f"{n:,}", f"{p50:.1f}", f"{p95:.1f}"])
    print_table("Exact vector search (top 10, numpy on two threads)", ["rows", "p50 ms", "p95 ms"], rows)
    from daemon.query.rank import _top_rows

    n = max(sizes)
    sub = []
    for m in (10_000, 50_000, 100_000, 200_000):
        if m > n:
            continue
        rng = np.random.default_rng(m)
        chosen = np.sort(rng.choice(n, m, replace=False)).astype(np.int64)
        mask = np.zeros(n, dtype=np.bool_)
        mask[chosen] = True
        p50, p95 = timed(lambda q, mask=mask: _top_rows(matrix, q, 10, np.flatnonzero(mask)), queries)
        full, _ = timed(lambda q, mask=mask: top_k(matrix, q, 10, normalized=True, mask=mask), queries)
        sub.append([f"{m:,} of {n:,}", f"{p50:.1f}", f"{p95:.1f}", f"{full:.1f}"])
    print_table(
        "A filter's rows ranked exactly (gathered) against the whole masked scan",
        ["rows allowed", "gathered p50 ms", "p95 ms", "masked full scan p50 ms"],
        sub,
    )


# ----- scale -----


# Chunk texts: 12 words drawn from a Zipf-distributed vocabulary of 50,000 made-up words, so a
# query's words match as few or as many chunks as words of real text do (a tiny vocabulary
# would make every word match half the store, which no keyword engine answers quickly).
def _word(i: int) -> str:
    letters = "bcdfghjklmnpqrstvwxz"  # letters only: the keyword tokenizer splits digits off
    out = "q"
    while True:
        i, r = divmod(i, len(letters))
        out += letters[r]
        if not i:
            return out + "o"


VOCAB = np.array([_word(i) for i in range(50_000)])
ZIPF = 1.0 / np.arange(1, len(VOCAB) + 1)
ZIPF /= ZIPF.sum()


def texts_for(source: str, count: int, rng: np.random.Generator) -> list[str]:
    words = VOCAB[rng.choice(len(VOCAB), size=(count, 12), p=ZIPF)]
    return [f"{source} #{i} " + " ".join(w) for i, w in enumerate(words)]


def query_texts(m: int) -> list[str]:
    """Three words each of ranks 100 to 20,000 (content words, not the commonest)."""
    rng = np.random.default_rng(11)
    return [" ".join(VOCAB[rng.integers(100, 20_000, 3)]) for _ in range(m)]


def fill(store: Store, n: int, gen: Clustered, *, prefix: Callable[[int], str]) -> None:
    now = int(time.time() * 1000)
    rng = np.random.default_rng(5)
    store._reserve(n + n // 8)  # a benchmark's shortcut: one allocation instead of ~40 growths
    for f in range((n + PER_FILE - 1) // PER_FILE):
        source = f"{prefix(f)}/f{f}.txt"
        count = min(PER_FILE, n - f * PER_FILE)
        vecs = gen.take(count)
        texts = texts_for(source, count, rng)
        entries = [NewEntry(t, None, i, content_hash(t), vecs[i], now) for i, t in enumerate(texts)]
        store.replace_source(source, entries, FileState(count, now * 1_000_000, f))


def prefix_of(f: int) -> str:
    # 50 % under a/, 10 % under b/, 3 % under c/ (by file), the rest under d/.
    r = f % 100
    return "a" if r < 50 else "b" if r < 60 else "c" if r < 63 else "d"


def cmd_scale(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))
    n = args.n
    tmp = Path(tempfile.mkdtemp(prefix="vector_scale."))
    gen = Clustered(n, intrinsic=args.intrinsic)
    t0 = time.perf_counter()
    store = Store.open(tmp / "embeddings.json", model="m", dimensions=DIMS, fingerprint=FINGERPRINT,
                       keyword=args.hybrid)  # fmt: skip
    fill(store, n, gen, prefix=prefix_of)
    filled = time.perf_counter() - t0
    rss_filled = peak_rss_mb()
    queries = gen.take(args.queries)
    snap = store.snapshot()
    exact50, exact95 = timed(
        lambda q: top_k(snap.matrix, q, 10, normalized=True, mask=snap.alive), queries[:50]
    )
    # Searches while the graph is built: exact, never blocked.
    during = []
    assert snap.ann is not None
    t0 = time.perf_counter()
    while not snap.ann.ready and time.perf_counter() - t0 < 3600:
        t = time.perf_counter()
        vector_top(snap, queries[len(during) % len(queries)], 10)
        during.append(time.perf_counter() - t)
        time.sleep(1.0)
    assert snap.ann.wait_ready(snap, 3600)
    build = time.perf_counter() - t0
    during50, during95 = percentiles(during) if during else (0.0, 0.0)
    rss_built = peak_rss_mb()
    index_mb = ann_path(store.path).stat().st_size / 1e6 if ann_path(store.path).exists() else float("nan")
    p50, p95 = timed(lambda q: vector_top(snap, q, 10), queries[:100])
    rec = recall(snap, queries, 10)
    rows = [
        ["fill the store in memory", f"{filled:.0f} s", f"peak RSS {rss_filled:,.0f} MB"],
        ["exact search (before the graph)", f"p50 {exact50:.1f} ms", f"p95 {exact95:.1f} ms"],
        ["graph build (background, 2 threads)", f"{build:.0f} s", f"{n / build:,.0f} rows/s"],
        ["searches during the build (exact)", f"p50 {during50:.1f} ms",
         f"p95 {during95:.1f} ms, {len(during)} searches"],
        ["graph size (file = memory)", f"{index_mb:,.0f} MB", f"peak RSS {rss_built:,.0f} MB"],
        ["vector search, graph + exact re-score", f"p50 {p50:.2f} ms", f"p95 {p95:.2f} ms"],
        ["recall@10 against exact", f"{rec:.4f}", f"{len(queries)} queries"],
    ]  # fmt: skip
    for name, pre in (("50 %", "a/"), ("10 %", "b/"), ("3 %", "c/")):
        mask = snap.source_mask(pre)
        fp50, fp95 = timed(lambda q, mask=mask: vector_top(snap, q, 10, mask=mask), queries[:50])
        frec = recall(snap, queries[:50], 10, mask)
        where = f"filtered to {name} of rows ({pre})"
        rows.append([where, f"p50 {fp50:.2f} ms, p95 {fp95:.2f} ms", f"recall@10 {frec:.4f}"])
    # One edit: a new file's chunk is found in the very next snapshot, a removed file's never.
    target = gen.take(3)
    now = int(time.time() * 1000)
    new = [
        NewEntry(f"new chunk {i}", None, i, content_hash(f"new chunk {i}"), target[i], now) for i in range(3)
    ]
    t = time.perf_counter()
    store.replace_source("e/new.txt", new, FileState(3, now, 10**9))
    gone = store.source_entries("a/f0.txt")[0].vector.copy()
    store.remove_source("a/f0.txt")
    snap = store.snapshot()
    edit = time.perf_counter() - t
    hit = vector_top(snap, target[1], 1)
    found_new = snap.rows[hit[0][0]].source == "e/new.txt"
    never_gone = all(snap.rows[r].source != "a/f0.txt" for r, _ in vector_top(snap, gone, 100))
    t = time.perf_counter()
    store.matrix()  # compacts, as a save does: the graph's map moves with the rows
    compact = time.perf_counter() - t
    snap = store.snapshot()
    assert snap.ann is not None and snap.ann.wait_ready(snap, 60)
    after50, after95 = timed(lambda q: vector_top(snap, q, 10), queries[:50])
    rec_after = recall(snap, queries[:100], 10)
    rows += [
        ["edit + snapshot, then search", "new chunk found" if found_new else "NEW CHUNK MISSED",
         "deleted never returned" if never_gone else "DELETED RETURNED"],
        ["compaction (rows move) incl. the map", f"{compact * 1e3:.0f} ms", f"edit {edit * 1e3:.0f} ms"],
        ["after the compaction", f"p50 {after50:.2f} ms, p95 {after95:.2f} ms", f"recall@10 {rec_after:.4f}"],
    ]  # fmt: skip
    if args.hybrid:
        opts = SearchOptions(k=10)
        texts = query_texts(50)
        times = []
        for q, text in zip(queries[:50], texts, strict=True):
            t = time.perf_counter()
            search_snapshot(snap, text, q, opts)
            times.append(time.perf_counter() - t)
        h50, h95 = percentiles(times)
        rows.append(["hybrid search (vector + keyword, fused)", f"p50 {h50:.1f} ms", f"p95 {h95:.1f} ms"])
    t = time.perf_counter()
    store.close()  # writes <store>.ann
    closed = time.perf_counter() - t
    rows.append(["close (writes the graph file)", f"{closed:.1f} s", f"peak RSS {peak_rss_mb():,.0f} MB"])
    kind = f"each cluster along {args.intrinsic} directions" if args.intrinsic else "isotropic clusters"
    print_table(f"Vector search at {n:,} chunks (384-d, synthetic: {kind})", ["measure", "value", ""], rows)
    reopen(tmp, n, Clustered(n, intrinsic=args.intrinsic), prefix_of)
    shutil.rmtree(tmp, ignore_errors=True)


def reopen(tmp: Path, n: int, same: Clustered, prefix: Callable[[int], str]) -> None:
    """Open the graph file again for a store holding the same rows (as a restart does)."""
    ann_path(tmp / "embeddings.json").replace(ann_path(tmp / "other.json"))
    store = Store.open(tmp / "other.json", model="m", dimensions=DIMS, fingerprint=FINGERPRINT, keyword=False)
    fill(store, n, same, prefix=prefix)  # the same seed: the same hashes and vectors
    t = time.perf_counter()
    snap = store.snapshot()
    assert snap.ann is not None and snap.ann.wait_ready(snap, 3600)
    loaded = time.perf_counter() - t
    print(f"\nreopen: graph file matched by hash and serving after {loaded:.1f} s ({snap.ann.progress.via})")
    store.close()


# ----- real -----


def sentences(limit: int) -> list[str]:
    out: list[str] = []
    for base in DATA_DIRS:
        for name in ("cacm", "cisi"):
            path = base / name / "corpus.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                doc = json.loads(line)
                text = f"{doc.get('title', '')}. {doc.get('text', '')}"
                out += [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if len(s.strip()) > 20]
        if out:
            break
    seen: dict[str, None] = dict.fromkeys(out)
    return list(seen)[:limit]


def cmd_real(args: argparse.Namespace) -> None:
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    texts = sentences(args.n + args.queries)
    if len(texts) < args.n + args.queries:
        raise SystemExit(f"only {len(texts)} sentences in bench/data (run bench/ircollections.py)")
    embedder = LlamaEmbedder(Path(args.model), EmbedderSettings(threads=2))
    t = time.perf_counter()
    vecs = np.concatenate([embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    embed_s = time.perf_counter() - t
    queries, docs, dtexts = vecs[: args.queries], vecs[args.queries :], texts[args.queries :]
    tmp = Path(tempfile.mkdtemp(prefix="vector_real."))
    store = Store.open(tmp / "embeddings.json", model="m", dimensions=DIMS, fingerprint=FINGERPRINT,
                       keyword=False, ann_min_rows=min(args.n, ann.MIN_ROWS))  # fmt: skip
    now = int(time.time() * 1000)
    for f in range(0, len(docs), PER_FILE):
        entries = [
            NewEntry(dtexts[f + i], None, i, content_hash(dtexts[f + i]), docs[f + i], now)
            for i in range(min(PER_FILE, len(docs) - f))
        ]
        store.replace_source(f"{prefix_of(f // PER_FILE)}/f{f}.txt", entries, FileState(1, now, f))
    snap = store.snapshot()
    assert snap.ann is not None and snap.ann.wait_ready(snap, 600)
    exact50, _ = timed(lambda q: top_k(snap.matrix, q, 10, normalized=True, mask=snap.alive), queries)
    p50, p95 = timed(lambda q: vector_top(snap, q, 10), queries)
    rows = [
        ["sentences embedded", f"{len(texts):,}", f"{embed_s:.0f} s"],
        ["exact p50", f"{exact50:.2f} ms", ""],
        ["graph p50 / p95", f"{p50:.2f} ms", f"{p95:.2f} ms"],
        ["recall@10 against exact (held-out sentences as queries)", f"{recall(snap, queries, 10):.4f}", ""],
        ["recall@10, filtered to 10 % (b/)", f"{recall(snap, queries, 10, snap.source_mask('b/')):.4f}", ""],
    ]
    store.close()
    title = f"Real model vectors (all-MiniLM-L6-v2), {args.n:,} sentences of CACM and CISI"
    print_table(title, ["measure", "value", ""], rows)


# ----- sweep -----


def cmd_sweep(args: argparse.Namespace) -> None:
    from daemon.store.annfile import faiss_module

    faiss = faiss_module()
    n = args.n
    gen = Clustered(n, intrinsic=args.intrinsic)
    matrix = np.empty((n, DIMS), dtype=np.float32)
    for start in range(0, n, PER_FILE):  # in files of 100, as ``scale`` fills the store
        matrix[start : start + PER_FILE] = gen.take(min(PER_FILE, n - start))
    queries = gen.take(args.queries)
    exact = truth(matrix, queries, 10)
    rows = []
    for m in (int(x) for x in args.m.split(",")):
        faiss.omp_set_num_threads(ann.BUILD_THREADS)
        t = time.perf_counter()
        if args.quantizer == "flat":
            index = faiss.IndexHNSWFlat(DIMS, m, faiss.METRIC_INNER_PRODUCT)
        else:
            qtype = getattr(faiss.ScalarQuantizer, "QT_" + args.quantizer)
            index = faiss.IndexHNSWSQ(DIMS, qtype, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.train(matrix[:: max(1, n // ann.TRAIN_SAMPLE)])
        for start in range(0, n, ann.BUILD_BATCH):
            index.add(matrix[start : start + ann.BUILD_BATCH])
        build = time.perf_counter() - t
        faiss.omp_set_num_threads(1)
        for ef in (int(x) for x in args.ef.split(",")):
            params = faiss.SearchParametersHNSW()
            params.efSearch = ef
            for fetch in sorted({10 + ann.OVERSAMPLE + 1, ef}):
                found, times = 0, []
                for q, want in zip(queries, exact, strict=True):
                    t = time.perf_counter()
                    _, labels = index.search(q.reshape(1, -1), fetch, params=params)
                    cand = labels[0][labels[0] >= 0]
                    scores = matrix[cand] @ q
                    best = cand[np.argpartition(-scores, 9)[:10]]
                    times.append(time.perf_counter() - t)
                    found += len(set(best.tolist()) & want)
                p50, _ = percentiles(times)
                rec = found / (10 * len(queries))
                rows.append([f"M {m}", ef, fetch, f"{rec:.4f}", f"{p50:.2f}", f"{build:.0f}"])
    kind = f"{args.intrinsic} directions" if args.intrinsic else "isotropic"
    print_table(
        f"Graph sweep at {n:,} rows ({kind}, {args.quantizer}, efConstruction {args.ef_construction})",
        ["graph", "efSearch", "candidates re-scored", "recall@10", "p50 ms", "build s"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("exact")
    p.add_argument("--sizes", default="50000,100000,150000,200000,400000,1000000")
    p.add_argument("--queries", type=int, default=40)
    p = sub.add_parser("scale")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--hybrid", action="store_true")
    p.add_argument(
        "--intrinsic", type=int, default=None, help="spread each cluster along this many directions"
    )
    p = sub.add_parser("real")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--model", default="/work/main/models/all-MiniLM-L6-v2.gguf")
    p = sub.add_parser("sweep")
    p.add_argument("--n", type=int, default=300_000)
    p.add_argument("--m", default="16,32", help="the graph's M values, comma-separated")
    p.add_argument("--ef", default="256,512,1024")
    p.add_argument("--ef-construction", type=int, default=ann.GRAPH.ef_construction)
    p.add_argument("--quantizer", default=ann.GRAPH.quantizer, help="8bit, fp16, ... or flat (float32)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--intrinsic", type=int, default=16)
    args = parser.parse_args()
    {"exact": cmd_exact, "scale": cmd_scale, "real": cmd_real, "sweep": cmd_sweep}[args.cmd](args)


if __name__ == "__main__":
    main()
