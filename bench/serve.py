"""The local API: search latency through the daemon against a cold `embedd search`, during a bulk
index, and embeddings requests per second against a plain llama-cpp-python loop. Same run, same
machine.

    python bench/serve.py                 # 1k, 10k and 100k chunks; about 20 minutes
    python bench/serve.py --quick         # 1k and 5k chunks, small counts; a couple of minutes
    python bench/serve.py --sizes 100000 --queries 150 --compare /tmp/before --compare .
                                          # search latency of two checkouts, alternating rounds

1. For each store size: a store of N chunks (random unit vectors beside real files, so the
   daemon's startup scan has nothing to do), the daemon started on it, then
   - search over HTTP on the socket (one persistent connection, sequential): p50/p95/p99;
   - `embedd search` as a process, answered by the daemon;
   - `embedd search --no-daemon` as a process: today's cold path (loads the model, reads the store).
2. During a bulk index: the daemon on the middle-sized store, then ``--bulk-chunks`` new chunks
   (real text, embedded by the model) dropped into its folder once the keyword postings are
   built (``keyword_postings_ready`` in the daemon's log: before it the keyword side ranks in
   SQLite, a start-up state); searches run back to back until the last is in the store.
   ``--bulk-only`` runs just this part on the largest store, one search per ``--bulk-modes``
   mode in turn, each mode's latency over HTTP and in the daemon (``took_ms``) apart.
3. Observing: on the largest store, searches alone against searches while an events stream is
   open and ``/metrics`` is scraped every second, in alternating rounds on one daemon
   (``--observe-only`` runs just this part).
4. Embeddings: ``--clients`` threads each send single short texts for ``--seconds``; against the
   same model in a plain llama-cpp-python loop (one text per call) in this process, with the
   daemon stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from corpus import chunks as corpus_chunks
from machine import machine_line
from servekit import QUERIES, RunningDaemon, build_store, default_model, embedd, percentiles

from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder, physical_cores


def fmt(p: dict[str, float]) -> str:
    return f"{p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f}"


# The searches timed at each size: the three modes, and hybrid with k distinct files.
SEARCHES: tuple[tuple[str, dict[str, object]], ...] = (
    ("hybrid", {"mode": "hybrid"}),
    ("hybrid, group_by file", {"mode": "hybrid", "group_by": "file"}),
    ("vector", {"mode": "vector"}),
    ("keyword", {"mode": "keyword"}),
)


def search_rows(daemon: RunningDaemon, n: int, queries: int, label: str = "") -> list[str]:
    """Each of ``SEARCHES`` ``queries`` times over HTTP: p50/p95/p99 there and in ``took_ms``."""
    rows = []
    with daemon.client() as c:
        for name, extra in SEARCHES:
            for q in QUERIES:  # warm-up: first requests pay for lazy imports and page faults
                c.post("/v1/search", json={"query": q, "k": 5, **extra}).raise_for_status()
            ms, took = [], []
            for i in range(queries):
                t0 = time.perf_counter()
                r = c.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "k": 5, **extra})
                ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                took.append(r.json()["took_ms"])
            rows.append(
                f"| {n:,} | {label}daemon, HTTP on the socket, {name} | {queries} | {fmt(percentiles(ms))} |"
            )
            rows.append(
                f"| {n:,} | {label}(in the daemon: took_ms), {name} | {queries} | {fmt(percentiles(took))} |"
            )
    return rows


def compare_code(
    root: Path, model: Path, n: int, codes: Sequence[Path], *, queries: int, rounds: int
) -> list[str]:
    """Search latency of each tree in ``codes`` on one store, in alternating rounds (the same load)."""
    cfg = build_store(root, model, n)
    rows = []
    for r in range(1, rounds + 1):
        for code in codes:
            daemon = RunningDaemon(cfg, code=code)
            try:
                daemon.wait_ready()
                daemon.wait_logged("keyword_postings_ready")
                rows += search_rows(daemon, n, queries, f"round {r}, {code.name}: ")
            finally:
                daemon.stop()
            print("\n".join(rows[-2 * len(SEARCHES) :]), file=sys.stderr, flush=True)
    return rows


def latency_at(root: Path, model: Path, n: int, *, queries: int, cli_runs: int, cold_runs: int) -> list[str]:
    cfg = build_store(root, model, n)
    rows = []
    daemon = RunningDaemon(cfg)
    try:
        daemon.wait_ready()
        # Keyword search ranks in SQLite until the in-memory postings are built (in a thread).
        built = daemon.wait_logged("keyword_postings_ready")
        rows.append(f"| {n:,} | (keyword postings built {built:.1f} s after the API was up) | | | | |")
        rows += search_rows(daemon, n, queries)
        ms = []
        for i in range(cli_runs):
            t0 = time.perf_counter()
            embedd("search", "--config", str(cfg), "--json", QUERIES[i % len(QUERIES)])
            ms.append((time.perf_counter() - t0) * 1000)
        rows.append(
            f"| {n:,} | `embedd search`, answered by the daemon | {cli_runs} | {fmt(percentiles(ms))} |"
        )
        ms = []
        for i in range(cold_runs):
            t0 = time.perf_counter()
            embedd("search", "--config", str(cfg), "--json", "--no-daemon", QUERIES[i % len(QUERIES)])
            ms.append((time.perf_counter() - t0) * 1000)
        rows.append(f"| {n:,} | `embedd search --no-daemon` (cold) | {cold_runs} | {fmt(percentiles(ms))} |")
    finally:
        daemon.stop()
    return rows


def during_bulk(root: Path, model: Path, n: int, bulk_chunks: int, *, modes: Sequence[str] = ()) -> list[str]:
    """Searches back to back during a bulk index; with ``modes``, one search per mode in turn, each
    mode's latency apart, over HTTP and in the daemon (``took_ms``), to tell where a search waits."""
    cfg = build_store(root, model, n)
    daemon = RunningDaemon(cfg)
    try:
        daemon.wait_ready()
        # Until its postings are built (seconds after the API is up at 100,000 chunks) the
        # keyword side ranks in SQLite, 160 ms a query: measure the steady state, not the start.
        postings_s = daemon.wait_logged("keyword_postings_ready")
        texts = corpus_chunks(min(bulk_chunks, 3000), seed=99)
        per_file = 40
        with daemon.client() as c:
            base = c.get("/v1/status").json()["daemon"]["in_memory"]["chunks"]
            for q in QUERIES:
                c.post("/v1/search", json={"query": q, "k": 5}).raise_for_status()
            start = time.perf_counter()
            for f in range(0, bulk_chunks, per_file):
                body = [
                    f"{texts[(f + i) % len(texts)]} (bulk {f + i})"
                    for i in range(min(per_file, bulk_chunks - f))
                ]
                tmp = root / f"bulk{f:06}.tmp"
                tmp.write_text("\n\n".join(body))
                tmp.rename(root / "inbox" / f"bulk{f:06}.txt")
            ms: list[float] = []
            by_mode: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in modes}
            i = 0
            while True:
                req: dict[str, object] = {"query": QUERIES[i % len(QUERIES)], "k": 5}
                mode = modes[i % len(modes)] if modes else None
                if mode is not None:
                    req["mode"] = mode
                t0 = time.perf_counter()
                r = c.post("/v1/search", json=req)
                wall = (time.perf_counter() - t0) * 1000
                ms.append(wall)
                r.raise_for_status()
                if mode is not None:
                    by_mode[mode][0].append(wall)
                    by_mode[mode][1].append(float(r.json()["took_ms"]))
                i += 1
                if i % 10 == 0:
                    live = c.get("/v1/status").json()["daemon"]
                    if live["in_memory"]["chunks"] >= base + bulk_chunks and live["queued_files"] == 0:
                        break
            seconds = time.perf_counter() - start
    finally:
        daemon.stop()
    out = [
        f"| {n:,} + {bulk_chunks:,} bulk | daemon, HTTP, during the bulk index | {len(ms)} | "
        f"{fmt(percentiles(ms))} |",
    ]
    for mode, (wall_ms, took) in by_mode.items():
        out.append(
            f"| {n:,} + {bulk_chunks:,} bulk | {mode}, HTTP | {len(wall_ms)} | {fmt(percentiles(wall_ms))} |"
        )
        out.append(
            f"| {n:,} + {bulk_chunks:,} bulk | {mode}, in the daemon (took_ms) | {len(took)} | "
            f"{fmt(percentiles(took))} |"
        )
    out.append(
        f"\nThe keyword postings were ready {postings_s:.1f} s after the API; the bulk index began then."
    )
    out.append(
        f"\nBulk index of {bulk_chunks:,} chunks took {seconds:.1f} s ({bulk_chunks / seconds:.1f} chunks/s) "
        f"while {len(ms)} searches ran back to back."
    )
    return out


def observed_cost(root: Path, model: Path, n: int, *, queries: int, rounds: int = 6) -> list[str]:
    """Search p50 alone and with an open events stream plus /metrics scraped every second."""
    cfg = build_store(root, model, n)
    daemon = RunningDaemon(cfg)
    plain: list[float] = []
    watched: list[float] = []
    scrapes = 0
    try:
        daemon.wait_ready()
        with daemon.client() as c:
            for q in QUERIES:
                c.post("/v1/search", json={"query": q, "k": 5}).raise_for_status()

            def timed(into: list[float]) -> None:
                for i in range(queries // rounds):
                    t0 = time.perf_counter()
                    c.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "k": 5}).raise_for_status()
                    into.append((time.perf_counter() - t0) * 1000)

            for _ in range(rounds):  # alternating, so the shared machine's drift hits both alike
                timed(plain)
                stop = threading.Event()

                def stream(stop: threading.Event = stop) -> None:
                    with (
                        daemon.client(timeout=None) as s,
                        s.stream(
                            "GET", "/v1/events?since=0", headers={"Accept": "text/event-stream"}
                        ) as resp,
                    ):
                        for _line in resp.iter_lines():
                            if stop.is_set():
                                return

                def scrape(stop: threading.Event = stop) -> None:
                    nonlocal scrapes
                    with daemon.client() as m:
                        while not stop.wait(1.0):
                            m.get("/metrics").raise_for_status()
                            scrapes += 1

                threads = [threading.Thread(target=f, daemon=True) for f in (stream, scrape)]
                for t in threads:
                    t.start()
                timed(watched)
                stop.set()
                threads[1].join()
            # CPU the daemon spends, idle, alone and while observed: load on the shared machine
            # moves latencies by more than 5%, but not what the process itself consumes.
            idle = _cpu_seconds(daemon.proc.pid, 10.0)
            stop = threading.Event()
            threads = [threading.Thread(target=f, args=(stop,), daemon=True) for f in (stream, scrape)]
            for t in threads:
                t.start()
            busy = _cpu_seconds(daemon.proc.pid, 10.0)
            stop.set()
            threads[1].join()
    finally:
        daemon.stop()
    a, b = percentiles(plain)["p50"], percentiles(watched)["p50"]
    return [
        "",
        f"## Searches while observed ({n:,} chunks, {len(plain)} + {len(watched)} searches, "
        f"{scrapes} scrapes)",
        "",
        "| searches | p50 | p95 | p99 |",
        "| --- | ---: | ---: | ---: |",
        f"| alone | {fmt(percentiles(plain))} |",
        f"| events stream open, /metrics every 1 s | {fmt(percentiles(watched))} |",
        "",
        f"p50 ratio (observed / alone): {b / a:.3f}",
        "",
        f"The daemon's own CPU over 10 s idle: {idle * 100:.2f}% of a core alone, {busy * 100:.2f}% with an "
        "events stream open and /metrics scraped every second.",
    ]


def _cpu_seconds(pid: int, seconds: float) -> float:
    """CPU seconds (user + system) process ``pid`` used per second of wall time over ``seconds``."""

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before, t0 = used(), time.perf_counter()
    time.sleep(seconds)
    return (used() - before) / (time.perf_counter() - t0)


def embeddings_rate(root: Path, model: Path, clients: int, seconds: float) -> list[str]:
    cfg = build_store(root, model, 100)
    daemon = RunningDaemon(cfg)
    done = [0] * clients
    errors = [0] * clients
    try:
        daemon.wait_ready()
        stop_at = time.monotonic() + seconds

        def client(k: int) -> None:
            with daemon.client() as c:
                n = 0
                while time.monotonic() < stop_at:
                    r = c.post("/v1/embeddings", json={"input": f"short text number {k}-{n}", "model": "m"})
                    if r.status_code == 200:
                        done[k] += 1
                    else:
                        errors[k] += 1
                    n += 1

        with daemon.client() as c:
            c.post("/v1/embeddings", json={"input": "warm up"}).raise_for_status()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = sum(done) / (time.perf_counter() - t0)
    finally:
        daemon.stop()
    embedder = LlamaEmbedder(model, EmbedderSettings(threads=physical_cores()))
    try:
        embedder.embed(["warm up"])
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            embedder.embed([f"short text number 0-{n}"])
            n += 1
        loop = n / (time.perf_counter() - t0)
    finally:
        embedder.close()
    return [
        "| what | requests/s |",
        "| --- | ---: |",
        f"| daemon, {clients} concurrent clients, one short text per request (HTTP) | {served:.1f} |",
        f"| plain llama-cpp-python loop, one text per call, same model and threads | {loop:.1f} |",
        f"| ratio daemon / loop | {served / loop:.2f}x |",
        f"\nErrors: {sum(errors)} of {sum(done) + sum(errors)} requests.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and counts, to check the benchmark runs"
    )
    parser.add_argument(
        "--sizes", default=None, help="store sizes, comma-separated (default 1000,10000,100000)"
    )
    parser.add_argument("--queries", type=int, default=None, help="HTTP searches per size (default 300)")
    parser.add_argument(
        "--cli-runs", type=int, default=None, help="`embedd search` runs per size (default 10)"
    )
    parser.add_argument("--cold-runs", type=int, default=None, help="cold runs per size (default 5)")
    parser.add_argument(
        "--bulk-chunks", type=int, default=None, help="chunks in the bulk index (default 2000)"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=None, help="embeddings test length (default 30)")
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument(
        "--observe-only", action="store_true", help="only searches alone against searches while observed"
    )
    parser.add_argument(
        "--bulk-only",
        action="store_true",
        help="only the bulk index (at the largest size), one search per mode in turn, each mode apart",
    )
    parser.add_argument(
        "--bulk-modes", default="hybrid,vector,keyword", help="with --bulk-only: the modes, in turn"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="TREE",
        help="only search latency at the largest size, the daemon run from each TREE given (a checkout "
        "of embedd; repeat the option) in alternating rounds on one store",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: rounds (default 2)")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = [int(s) for s in (args.sizes or ("1000,5000" if quick else "1000,10000,100000")).split(",")]
    queries = args.queries or (30 if quick else 300)
    cli_runs = args.cli_runs or (3 if quick else 10)
    cold_runs = args.cold_runs or (2 if quick else 5)
    bulk = args.bulk_chunks or (200 if quick else 2000)
    seconds = args.seconds or (5.0 if quick else 30.0)
    if not args.model.exists():
        print(f"no model at {args.model}: run `make model` first", file=sys.stderr)
        return 2
    out = [
        f"# embedd API benchmark{' (--quick: not for publication)' if quick else ''}",
        "",
        machine_line(),
        "",
    ]
    if args.bulk_only:
        with tempfile.TemporaryDirectory(prefix="embedd-bench-") as tmp:
            out += [
                "| chunks | path | runs | p50 | p95 | p99 |",
                "| ---: | --- | ---: | ---: | ---: | ---: |",
            ]
            out += during_bulk(
                Path(tmp) / "bulk", args.model, max(sizes), bulk, modes=args.bulk_modes.split(",")
            )
        print("\n".join(out))
        return 0
    if args.compare:
        with tempfile.TemporaryDirectory(prefix="embedd-bench-") as tmp:
            out += [
                "| chunks | path | runs | p50 | p95 | p99 |",
                "| ---: | --- | ---: | ---: | ---: | ---: |",
            ]
            trees = [t.resolve() for t in args.compare]
            out += compare_code(
                Path(tmp) / "cmp", args.model, max(sizes), trees, queries=queries, rounds=args.rounds
            )
        print("\n".join(out))
        return 0
    if args.observe_only:
        with tempfile.TemporaryDirectory(prefix="embedd-bench-") as tmp:
            out += observed_cost(Path(tmp) / "obs", args.model, max(sizes), queries=queries)
        print("\n".join(out))
        return 0
    out += [
        "## Search latency (ms)",
        "",
        "| chunks | path | runs | p50 | p95 | p99 |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory(prefix="embedd-bench-") as tmp:
        for n in sizes:
            out += latency_at(
                Path(tmp) / f"s{n}", args.model, n, queries=queries, cli_runs=cli_runs, cold_runs=cold_runs
            )
            print("\n".join(out[-4:]), file=sys.stderr, flush=True)
        out += observed_cost(Path(tmp) / "obs", args.model, max(sizes), queries=queries)
        mid = sizes[len(sizes) // 2]
        out += during_bulk(Path(tmp) / "bulk", args.model, mid, bulk)
        out += ["", "## Embeddings, single short texts", ""]
        out += embeddings_rate(Path(tmp) / "emb", args.model, args.clients, seconds)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
