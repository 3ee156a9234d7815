"""``embedd search``: the chunks closest to a query, from the JSON store or from a sink.

The store is opened read-only (no lock), so a search never blocks or disturbs a running
daemon. A store built with another model file is refused: its vectors live in another space
and the ranking would be noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from daemon.commands.output import print_json
from daemon.config import Config
from daemon.errors import UsageError
from daemon.query.hit import Hit, render_hits
from daemon.query.rank import check_compatible, search_store
from daemon.store.store import Store


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query against one store or sink."""

    query: str
    store: Path
    model: str
    searched: int  # chunks compared (0 for a sink, which does not say)
    hits: tuple[Hit, ...]
    notes: tuple[str, ...] = ()  # caveats for the person reading the results
    sink: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        doc: dict[str, Any] = {
            "query": self.query,
            "store": str(self.store),
            "model": self.model,
            "searched": self.searched,
            "results": [h.to_json() for h in self.hits],
            "notes": list(self.notes),
        }
        if self.sink is not None:
            doc["sink"] = self.sink
        return doc


def run_search(config: Config, query: str, k: int) -> SearchResult:
    """Search ``config``'s store with ``config``'s model, loaded for this one query.

    Raises StoreError when there is no store, ModelError when the model cannot be loaded and
    FingerprintMismatchError when the store was built with another model.
    """
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder

    _check_query(query, k)
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


def run_sink_search(
    config: Config, sink: str, query: str, k: int, *, source_prefix: str | None = None
) -> SearchResult:
    """Search a ``[[sink]]`` (every daemon's rows), the query embedded with ``config``'s model."""
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
    from daemon.sinks.mirror import checked_sink, search_sink

    _check_query(query, k)
    checked_sink(config, sink)  # a wrong name or a missing client is said before loading the model
    embedder = LlamaEmbedder(config.model.path, EmbedderSettings(threads=config.model.threads))
    try:
        vector = embedder.embed([config.model.query_prefix + query])[0]
        model = embedder.name
    finally:
        embedder.close()
    hits = search_sink(config, sink, vector, k, source_prefix=source_prefix)
    return SearchResult(query, config.store.path, model, 0, tuple(hits), sink=sink)


def _check_query(query: str, k: int) -> None:
    if not query.strip():
        raise UsageError("the query is empty")
    if k < 1:
        raise UsageError(f"-k must be at least 1, not {k}")


def render_result(result: SearchResult, out: TextIO) -> None:
    """Print the hits for a person: rank, score, where, and a snippet of the text."""
    if result.sink is not None:
        empty = f"no results in sink {result.sink}"
    else:
        empty = f"no results: the store {result.store} holds no chunks yet"
    render_hits(result.hits, out, empty=empty)


def search_command(
    config: Config,
    query: str,
    k: int,
    *,
    as_json: bool,
    sink: str | None,
    source_prefix: str | None,
    out: TextIO,
    err: TextIO,
) -> None:
    """``embedd search``: rank and print; ``sink`` searches that ``[[sink]]`` instead of the store."""
    if sink is None and source_prefix is not None:
        raise UsageError("--source-prefix needs --sink")
    if sink is not None:
        result = run_sink_search(config, sink, query, k, source_prefix=source_prefix)
    else:
        result = run_search(config, query, k)
    for note in result.notes:
        err.write(f"embedd search: note: {note}\n")
    if as_json:
        print_json(result.to_json(), out)
    else:
        render_result(result, out)
