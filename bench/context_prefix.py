"""Does prefixing the embedding input with the chunk's title and section path help nDCG@10?

    python bench/retrieval.py               # first: builds each collection's store
    python bench/context_prefix.py          # then: reads those stores, embeds in this process

A chunk that does not begin with its own heading (the second and later chunks of a long
section) loses the words of its heading; the prefix gives them back to the embedding only
(``content`` stays the chunk's text). For each collection's store (``bench/data/work/<name>``,
built by the real daemon, with the daemon stopped) the study embeds, in this process with the
same model, what the daemon embeds with ``[chunking] context_prefix = true``
(``daemon.ingest.chunker.embedding_input``: ``"<title> > <section path>\\n\\n<chunk>"`` for
every chunk that does not start with a heading of its path), keeps the stored vector for the
others, and ranks both variants the same way: cosine against the query's vector (embedded
here), a document at its best chunk. The unprefixed variant reproduces the daemon's vector
figures, a check that the offline ranking is the daemon's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
from irmetrics import evaluate
from machine import machine_line
from retrieval import DATA, MODEL, load

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder  # noqa: E402
from daemon.ingest.chunker import embedding_input  # noqa: E402


def read_store(path: Path) -> tuple[list[str], list[str], list[str | None], list[str | None], np.ndarray]:
    doc = orjson.loads(path.read_bytes())
    entries = doc["embeddings"]
    sources = [e["metadata"]["source"] for e in entries]
    contents = [e["content"] for e in entries]
    sections = [e["metadata"].get("section") for e in entries]
    titles = [e["metadata"].get("title") for e in entries]
    matrix = np.asarray([e["embedding"] for e in entries], dtype=np.float32)
    return sources, contents, sections, titles, matrix


def rank(matrix: np.ndarray, sources: Sequence[str], qvec: np.ndarray) -> list[str]:
    scores = matrix @ qvec
    order = np.argsort(-scores, kind="stable")
    seen: dict[str, None] = {}
    for i in order:
        doc = Path(sources[i]).stem
        if doc not in seen:
            seen[doc] = None
            if len(seen) >= 200:
                break
    return list(seen)


def study(name: str, embedder: LlamaEmbedder) -> dict[str, object]:
    _corpus, queries, qrels = load(name)
    sources, contents, sections, titles, matrix = read_store(
        DATA / "work" / name / "data" / "embeddings.json"
    )
    # The daemon's own rule (``[chunking] context_prefix``): what it would embed for each chunk.
    inputs = [embedding_input(contents[i], sections[i], titles[i]) for i in range(len(contents))]
    todo = [i for i in range(len(contents)) if inputs[i] != contents[i]]
    prefixed = matrix.copy()
    for b in range(0, len(todo), 64):
        batch = todo[b : b + 64]
        prefixed[batch] = embedder.embed([inputs[i] for i in batch])
    qids = list(qrels)
    qvecs = embedder.embed([queries[q] for q in qids])
    plain = {q: rank(matrix, sources, qvecs[j]) for j, q in enumerate(qids)}
    withp = {q: rank(prefixed, sources, qvecs[j]) for j, q in enumerate(qids)}
    return {
        "name": name,
        "chunks": len(contents),
        "prefixed": len(todo),
        "plain": evaluate(plain, qrels),
        "prefix": evaluate(withp, qrels),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collections", default="cisi,cacm")
    args = parser.parse_args(argv)
    print(f"Machine: {machine_line()}")
    embedder = LlamaEmbedder(MODEL, EmbedderSettings(threads=2))
    try:
        rows = [study(n, embedder) for n in args.collections.split(",")]
    finally:
        embedder.close()
    print("| collection | chunks | chunks prefixed | variant | nDCG@10 | recall@100 | MRR@10 |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        for variant in ("plain", "prefix"):
            m = r[variant]
            assert isinstance(m, dict)
            print(
                f"| {r['name']} | {r['chunks']} | {r['prefixed']} | {variant} | {m['ndcg@10']:.3f} "
                f"| {m['recall@100']:.3f} | {m['mrr@10']:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
