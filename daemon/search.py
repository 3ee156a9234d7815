"""``embedd search``: embed a query with the configured model and rank the store's chunks by cosine.

The store is opened read-only (no lock), so a search never blocks or disturbs a running
daemon. A store built with another model file is refused: its vectors live in another space
and the ranking would be noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from daemon.config import Config
from daemon.embedder import Embedder, FloatMatrix
from daemon.errors import FingerprintMismatchError, UsageError
from daemon.store import Store

SNIPPET_CHARS = 200


@dataclass(frozen=True)
class Hit:
    """One ranked chunk."""

    rank: int
    score: float
    id: str
    source: str
    page: int | None
    chunk: int
    content: str

    def to_json(self) -> dict[str, Any]:
        """The hit as a JSON object (full content)."""
        return {
            "rank": self.rank,
            "score": self.score,
            "id": self.id,
            "source": self.source,
            "page": self.page,
            "chunk": self.chunk,
            "content": self.content,
        }


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query against one store."""

    query: str
    store: Path
    model: str
    searched: int  # chunks compared
    hits: tuple[Hit, ...]
    notes: tuple[str, ...] = ()  # caveats for the person reading the results

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "query": self.query,
            "store": str(self.store),
            "model": self.model,
            "searched": self.searched,
            "results": [h.to_json() for h in self.hits],
            "notes": list(self.notes),
        }


def top_k(matrix: FloatMatrix, query: FloatMatrix, k: int, *, normalized: bool) -> list[tuple[int, float]]:
    """Rows of ``matrix`` most cosine-similar to ``query``, best first, as (row, score).

    With ``normalized`` the rows are taken as unit vectors already; otherwise each score is
    divided by its row's norm, which costs one float per row instead of a normalised copy.
    """
    n = len(matrix)
    if n == 0 or k <= 0:
        return []
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = matrix @ q
    if not normalized:
        scores /= np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    if k < n:
        best = np.argpartition(-scores, k - 1)[:k]
        order = best[np.argsort(-scores[best], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    return [(int(i), float(scores[i])) for i in order]


def check_compatible(store: Store, embedder: Embedder, model_path: Path) -> None:
    """Raise FingerprintMismatchError when ``embedder``'s vectors cannot be compared with the store's."""
    fp = store.fingerprint
    if fp is not None and fp.model_sha256 != embedder.fingerprint:
        raise FingerprintMismatchError(
            f"store {store.path} was embedded with the model file of sha256 {fp.model_sha256}, but the "
            f"configured model {model_path} has sha256 {embedder.fingerprint}; search with the model the "
            "store was built with, or re-embed the store with `embedd run --config … --reembed`"
        )
    if store.count and store.dimensions != embedder.dimension:
        raise FingerprintMismatchError(
            f"store {store.path} holds {store.dimensions}-dimensional vectors, but the configured "
            f"model {model_path} makes {embedder.dimension}-dimensional ones"
        )


def search_store(store: Store, embedder: Embedder, query: str, k: int, *, prefix: str = "") -> list[Hit]:
    """The ``k`` chunks of ``store`` closest to ``prefix + query``, best first."""
    if not query.strip():
        raise UsageError("the query is empty")
    if k < 1:
        raise UsageError(f"-k must be at least 1, not {k}")
    if store.count == 0:
        return []
    vector = embedder.embed([prefix + query])[0]
    fp = store.fingerprint
    ranked = top_k(store.matrix(), vector, k, normalized=fp is not None and fp.normalize)
    hits = []
    for rank, (row, score) in enumerate(ranked, start=1):
        e = store.entry(row)
        hits.append(Hit(rank, score, e.id, e.source, e.page, e.chunk, e.content))
    return hits


def run_search(config: Config, query: str, k: int) -> SearchResult:
    """Search ``config``'s store with ``config``'s model.

    Raises StoreError when there is no store, ModelError when the model cannot be loaded and
    FingerprintMismatchError when the store was built with another model.
    """
    from daemon.embedder import EmbedderSettings, LlamaEmbedder

    if not query.strip():
        raise UsageError("the query is empty")
    with Store.open_readonly(config.store.path) as store:
        embedder = LlamaEmbedder(
            config.model.path,
            EmbedderSettings(threads=config.model.threads, batch_tokens=config.model.batch_tokens),
        )
        try:
            check_compatible(store, embedder, config.model.path)
            hits = search_store(store, embedder, query, k, prefix=config.model.query_prefix)
        finally:
            embedder.close()
        notes: tuple[str, ...] = ()
        if store.fingerprint is None and store.count:
            notes = (
                f"the store {store.path} records no fingerprint (written by another tool), so it "
                "cannot be confirmed that its vectors come from the configured model",
            )
        return SearchResult(query, store.path, store.model or embedder.name, store.count, tuple(hits), notes)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` on one line, cut at a word boundary near ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    return flat[: cut if cut > limit // 2 else limit] + " …"


def render_result(result: SearchResult, out: TextIO) -> None:
    """Print the hits for a person: rank, score, where, and a snippet of the text."""
    if not result.hits:
        out.write(f"no results: the store {result.store} holds no chunks yet\n")
        return
    for hit in result.hits:
        where = hit.source + (f"  page {hit.page}" if hit.page is not None else "") + f"  chunk {hit.chunk}"
        out.write(f"{hit.rank:>2}. {hit.score:.4f}  {where}\n    {snippet(hit.content)}\n")
