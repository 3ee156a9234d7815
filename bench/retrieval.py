"""Retrieval quality on public IR test collections, through the real daemon's ``/v1/search``.

    python bench/ircollections.py        # once: fetched snapshots -> bench/data/<name>/
    python bench/retrieval.py            # every converted collection; about 10 minutes the first time

For each collection (``bench/data/<name>/``: corpus.jsonl, queries.jsonl, qrels.tsv):

1. Every document becomes one Markdown file, ``# title`` then its text, in the watched folder
   of a real daemon (``DaemonProc``, the default model) whose store lives in
   ``bench/data/work/<name>``; a rerun finds the files unchanged and embeds nothing.
2. Every query goes through ``POST /v1/search`` on the socket in each mode (``vector``,
   ``keyword``, ``hybrid``, and ``hybrid`` with ``group_by: "file"``, where the daemon fuses per
   file); a mode the daemon refuses is skipped and named. Hits are chunks:
   a document ranks at its best chunk. nDCG@10, recall@100, MRR@10 (``irmetrics``).
3. BM25 from bm25s (Snowball English stemmer from PyStemmer, English stop words) on the same
   text, in the same run.
4. Fusion study, offline: the vector top-200 documents from the daemon and the keyword top-200
   (the daemon's keyword mode when it has one, else bm25s as a stand-in), fused by RRF and by
   convex combinations of min-max and z-score normalised scores.

Quality figures are deterministic (same model, same files); timings and memory depend on the
machine and its load, printed apart with the CPU line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from daemonproc import DaemonProc
from irmetrics import Qrels, convex, evaluate, ranking, rrf
from machine import machine_line

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
MODEL = ROOT / "models" / "all-MiniLM-L6-v2.gguf"  # what `make setup` builds
MODES = ("vector", "keyword", "hybrid", "hybrid, group_by file")
FILE_K = 200  # files asked for with group_by file (DEPTH distinct documents)
DEPTH = 200  # documents per list in the fusion study
CHUNK_K = 1000  # chunks asked for, enough for DEPTH distinct documents (the API's maximum)
RRF_KS = (10, 20, 60)
ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def load(
    name: str, data: Path = DATA
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus, queries, qrels) of a converted collection."""
    folder = data / name
    corpus = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        corpus[doc["_id"]] = doc
    queries = {}
    for line in (folder / "queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels.tsv").read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")
        if qid in queries:
            qrels.setdefault(qid, {})[did] = int(grade)
    return corpus, queries, qrels


def document_text(doc: Mapping[str, str]) -> str:
    """The file a document becomes: its title as the first heading, then its text."""
    return f"# {doc['title']}\n\n{doc['text']}\n" if doc["text"] else f"# {doc['title']}\n"


def stage(corpus: Mapping[str, Mapping[str, str]], inbox: Path) -> int:
    """Writes the documents that differ from what is on disk; how many it wrote."""
    inbox.mkdir(parents=True, exist_ok=True)
    written = 0
    for did, doc in corpus.items():
        path = inbox / f"{did}.md"
        text = document_text(doc)
        if not path.exists() or path.read_text() != text:
            tmp = inbox.parent / f".{did}.tmp"
            tmp.write_text(text)
            tmp.rename(path)
            written += 1
    return written


def client(daemon: DaemonProc) -> httpx.Client:
    sock = daemon.workdir / "data" / "embeddings.sock"
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://embedd", timeout=300)


def wait_indexed(daemon: DaemonProc, files: int, timeout: float = 3600) -> None:
    """Until the daemon's status counts ``files`` files and nothing is queued or in progress."""
    deadline = time.monotonic() + timeout
    sock = daemon.workdir / "data" / "embeddings.sock"
    steady = 0
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited; see {daemon.log_path}")
        if sock.exists():
            try:
                with client(daemon) as c:
                    status = c.get("/v1/status").json()
            except (httpx.HTTPError, ValueError):
                status = {}
            live = status.get("daemon") or {}
            held = (live.get("in_memory") or {}).get("files")
            if held == files and not live.get("queued_files") and live.get("phase") == "ready":
                steady += 1
                if steady >= 3:  # three polls in a row: the worker is not between two files
                    return
            else:
                steady = 0
        time.sleep(2)  # /v1/status hashes the model file: not too often
    raise TimeoutError(f"not all {files} files indexed within {timeout:.0f} s; see {daemon.log_path}")


def doc_of(source: str) -> str:
    return Path(source).stem


def search(c: httpx.Client, query: str, mode: str | None) -> tuple[dict[str, float] | None, str]:
    """The best chunk's score per document for ``query`` (best first), or None and why refused."""
    body: dict[str, Any] = {"query": query, "k": CHUNK_K}
    if mode is not None and mode.endswith(", group_by file"):
        # The request a RAG app makes for k distinct documents: the daemon fuses per file.
        mode = mode.split(",")[0]
        body.update(k=FILE_K, group_by="file")
    if mode is not None:
        body["mode"] = mode
    r = c.post("/v1/search", json=body)
    if r.status_code != 200:
        return None, r.text[:200]
    # In a mode of its own a list's score is that retriever's (search-core's hits name both).
    field = {"vector": "vector_score", "keyword": "keyword_score"}.get(mode or "vector", "score")
    scores: dict[str, float] = {}
    for hit in r.json()["results"]:
        doc = doc_of(hit["source"])
        if doc not in scores:  # hits come best first: the first chunk of a document is its best
            value = hit.get(field)
            scores[doc] = float(hit["score"] if value is None else value)
    return scores, ""


def daemon_runs(
    c: httpx.Client, queries: Mapping[str, str]
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """Per mode the scores per query; the modes refused, with the daemon's answer."""
    runs: dict[str, dict[str, dict[str, float]]] = {}
    refused: dict[str, str] = {}
    for mode in MODES:
        first = next(iter(queries.values()))
        probe, why = search(c, first, mode)
        fallback = None
        if probe is None and mode == "vector":
            # A daemon without modes ranks by vectors only: today's /v1/search is the vector mode.
            probe, why = search(c, first, None)
            fallback = "vector (no `mode` field: the daemon ranks by vectors only)"
        if probe is None:
            refused[mode] = why
            continue
        if fallback:
            refused["vector-note"] = fallback
        runs[mode] = {q: search(c, text, None if fallback else mode)[0] or {} for q, text in queries.items()}
    return runs, refused


def bm25_runs(
    corpus: Mapping[str, Mapping[str, str]], queries: Mapping[str, str]
) -> tuple[dict[str, dict[str, float]], float]:
    """bm25s over the same text the daemon gets: top DEPTH documents per query; index seconds."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    ids = list(corpus)
    started = time.perf_counter()
    tokens = bm25s.tokenize(
        [document_text(corpus[d]) for d in ids], stopwords="en", stemmer=stemmer, show_progress=False
    )
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    seconds = time.perf_counter() - started
    qids = list(queries)
    qtokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    docs, scores = retriever.retrieve(qtokens, k=min(DEPTH, len(ids)), show_progress=False)
    out = {}
    for row, qid in enumerate(qids):
        out[qid] = {ids[int(d)]: float(s) for d, s in zip(docs[row], scores[row], strict=True) if s > 0}
    return out, seconds


def top(scores: Mapping[str, float], n: int = DEPTH) -> dict[str, float]:
    return {d: scores[d] for d in ranking(scores)[:n]}


def fusion_study(
    vector: Mapping[str, Mapping[str, float]], keyword: Mapping[str, Mapping[str, float]], qrels: Qrels
) -> dict[str, float]:
    """nDCG@10 of every fusion configuration."""
    out = {}
    qids = list(qrels)
    v = {q: top(vector.get(q, {})) for q in qids}
    kw = {q: top(keyword.get(q, {})) for q in qids}
    for k in RRF_KS:
        runs = {q: ranking(rrf([ranking(v[q]), ranking(kw[q])], k)) for q in qids}
        out[f"rrf k={k}"] = evaluate(runs, qrels)["ndcg@10"]
    for how in ("minmax", "zscore"):
        for alpha in ALPHAS:
            runs = {q: ranking(convex(v[q], kw[q], alpha, how)) for q in qids}
            out[f"{how} alpha={alpha}"] = evaluate(runs, qrels)["ndcg@10"]
    return out


def keyword_index_bytes(data: Path) -> int | None:
    """Bytes of the daemon's keyword sidecar(s) beside the store, None when it has none."""
    known = {"embeddings.json", "embeddings.json.idx", "embeddings.sock", "embeddings.json.lock"}
    found = [
        p
        for p in data.iterdir()
        if p.is_file() and p.name not in known and p.name.startswith("embeddings.json.kw")
    ]
    return sum(p.stat().st_size for p in found) if found else None


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def fmt_row(name: str, m: Mapping[str, float]) -> str:
    return f"| {name} | {m['ndcg@10']:.3f} | {m['recall@100']:.3f} | {m['mrr@10']:.3f} |"


def run_collection(name: str, threads: int, data: Path = DATA, model: Path = MODEL) -> dict[str, Any]:
    corpus, queries, qrels = load(name, data)
    work = data / "work" / name
    written = stage(corpus, work / "inbox")
    started = time.perf_counter()
    daemon = DaemonProc(work, model, dict(__import__("os").environ), threads=threads, nice=0)
    try:
        daemon.ready()
        wait_indexed(daemon, len(corpus))
        index_s = time.perf_counter() - started
        rss, hwm = memory_kib(daemon.pid)
        with client(daemon) as c:
            status = c.get("/v1/status").json()
            runs, refused = daemon_runs(c, queries)
            # Latency of one query per mode, sequential, after the runs warmed everything up.
            lat: dict[str, float] = {}
            for mode in runs:
                ms = []
                for text in list(queries.values())[:30]:
                    body: dict[str, Any] = {"query": text, "k": 10}
                    if "vector-note" not in refused or mode != "vector":
                        body["mode"] = mode.split(",")[0]
                    if mode.endswith(", group_by file"):
                        body["group_by"] = "file"
                    t0 = time.perf_counter()
                    c.post("/v1/search", json=body).raise_for_status()
                    ms.append((time.perf_counter() - t0) * 1000)
                lat[mode] = statistics.median(ms)
        sidecar = keyword_index_bytes(work / "data")
    finally:
        daemon.stop()
    bm25, bm25_s = bm25_runs(corpus, queries)
    metrics = {mode: evaluate({q: ranking(s) for q, s in r.items()}, qrels) for mode, r in runs.items()}
    metrics["BM25 (bm25s)"] = evaluate({q: ranking(s) for q, s in bm25.items()}, qrels)
    keyword_source = "daemon keyword mode" if "keyword" in runs else "bm25s (stand-in)"
    fusion = (
        fusion_study(runs.get("vector", {}), runs.get("keyword", bm25), qrels) if "vector" in runs else {}
    )
    return {
        "name": name,
        "documents": len(corpus),
        "queries": len(qrels),
        "chunks": (status.get("daemon") or {}).get("in_memory", {}).get("chunks"),
        "written": written,
        "index_s": index_s,
        "rss_mib": rss / 1024,
        "hwm_mib": hwm / 1024,
        "store_bytes": (work / "data" / "embeddings.json").stat().st_size,
        "keyword_bytes": sidecar,
        "bm25_index_s": bm25_s,
        "latency_ms": lat,
        "metrics": metrics,
        "refused": refused,
        "keyword_source": keyword_source,
        "fusion": fusion,
    }


def report(results: Sequence[dict[str, Any]]) -> str:
    lines = [f"Machine: {machine_line()}", ""]
    lines.append("Quality (deterministic):")
    lines.append("")
    for r in results:
        lines.append(f"{r['name']}: {r['documents']} documents, {r['chunks']} chunks, {r['queries']} queries")
        lines.append("")
        lines.append("| system | nDCG@10 | recall@100 | MRR@10 |")
        lines.append("| --- | ---: | ---: | ---: |")
        for name, m in r["metrics"].items():
            lines.append(fmt_row(name, m))
        for mode, why in r["refused"].items():
            lines.append(f"\n- {mode}: {why}")
        lines.append("")
    if any(r["fusion"] for r in results):
        names = list(results[0]["fusion"])
        lines.append(
            "Fusion study, nDCG@10 (vector top-200 from the daemon; keyword top-200 from "
            + ", ".join(f"{r['name']}: {r['keyword_source']}" for r in results)
            + "):"
        )
        lines.append("")
        lines.append("| fusion | " + " | ".join(r["name"] for r in results) + " | mean |")
        lines.append("| --- |" + " ---: |" * (len(results) + 1))
        for n in names:
            vals = [r["fusion"][n] for r in results]
            lines.append(
                f"| {n} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {statistics.fmean(vals):.3f} |"
            )
        lines.append("")
        for r in results:
            best = max(r["fusion"], key=lambda n: r["fusion"][n])
            base = max(r["metrics"]["BM25 (bm25s)"]["ndcg@10"], r["metrics"]["vector"]["ndcg@10"])
            lines.append(
                f"- {r['name']}: best {best} = {r['fusion'][best]:.3f}, "
                f"{r['fusion'][best] / base:.2f}x the better of BM25 and vector ({base:.3f}); goal 1.10x"
            )
        mean = {n: statistics.fmean(r["fusion"][n] for r in results) for n in names}
        best = max(mean, key=lambda n: mean[n])
        lines.append(f"- overall (mean over collections): best {best} = {mean[best]:.3f}")
        lines.append("")
    lines.append("Timings and memory (a busy, shared machine; indexing time is 0 when nothing was embedded):")
    lines.append("")
    lines.append(
        "| collection | files written | daemon start to indexed (s) | RSS / peak (MiB) | store (MB) "
        "| keyword index (MB) | bm25s index (s) | median search ms by mode (k=10) |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        kb = "-" if r["keyword_bytes"] is None else f"{r['keyword_bytes'] / 1e6:.2f}"
        lat = ", ".join(f"{m} {v:.1f}" for m, v in r["latency_ms"].items())
        lines.append(
            f"| {r['name']} | {r['written']} | {r['index_s']:.0f} | {r['rss_mib']:.0f} / {r['hwm_mib']:.0f} "
            f"| {r['store_bytes'] / 1e6:.1f} | {kb} | {r['bm25_index_s']:.2f} | {lat} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collections", default="cisi,cacm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="the converted collections and their daemons' work dirs (<data>/<name>, <data>/work/<name>; "
        "default bench/data): another checkout's, so its stores need no embedding",
    )
    parser.add_argument(
        "--model", type=Path, default=MODEL, help="the GGUF model (default models/all-MiniLM-L6-v2.gguf)"
    )
    args = parser.parse_args(argv)
    print(f"Machine: {machine_line()}", flush=True)
    results = []
    for name in args.collections.split(","):
        print(f"{name}: indexing and querying ...", flush=True)
        results.append(run_collection(name, args.threads, args.data, args.model))
    text = report(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
