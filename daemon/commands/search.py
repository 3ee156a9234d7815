"""``embedd search``: the chunks closest to a query, from the JSON store or from a sink.

When a daemon runs on the store, it is asked over its socket: it holds the model and the
vectors already, so the answer takes milliseconds. Otherwise (or with ``--no-daemon``) the
model is loaded here and the store opened read-only (no lock), so a search never blocks or
disturbs a daemon. Both rank with ``daemon.query.rank.rank_snapshot`` and give the same
``--json``. A store built with another model file is refused: its vectors live in another
space and the ranking would be noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from daemon.commands.output import print_json
from daemon.config import Config
from daemon.errors import DaemonRequestError, DaemonUnavailable, EmbeddError, EmbedError, UsageError
from daemon.query.hit import Hit, render_hits


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


def run_search(config: Config, query: str, k: int, *, use_daemon: bool = True) -> SearchResult:
    """Search ``config``'s store: through the running daemon when one answers, else here.

    Raises StoreError when there is no store, ModelError when the model cannot be loaded and
    FingerprintMismatchError when the store was built with another model.
    """
    _check_query(query, k)
    if use_daemon:
        answered = search_via_daemon(config, query, k)
        if answered is not None:
            return answered
    return search_here(config, query, k)


def search_via_daemon(config: Config, query: str, k: int) -> SearchResult | None:
    """The running daemon's answer; None when no daemon for this store answers (or it is starting)."""
    from daemon.serve.client import DaemonClient

    client = DaemonClient.for_config(config)
    if client is None:
        return None
    try:
        doc = client.search(query, k)
    except DaemonUnavailable:
        return None
    except DaemonRequestError as exc:
        if exc.status == 503:
            return None  # starting or stopping: the store on disk answers meanwhile
        if exc.status == 422:
            raise EmbedError(f"the query is too long: {exc.message}") from exc
        if exc.status == 400:
            raise UsageError(exc.message) from exc
        raise EmbeddError(f"the daemon at {client.where} refused the search: {exc.message}") from exc
    if doc.get("store") != str(config.store.path):
        return None  # a daemon of another store answers on this socket
    hits = tuple(Hit.from_json(h) for h in doc["results"])
    return SearchResult(query, config.store.path, str(doc["model"]), int(doc["searched"]), hits)


def search_here(config: Config, query: str, k: int) -> SearchResult:
    """Search ``config``'s store with ``config``'s model, loaded for this one query."""
    # Imported here: a search answered by the daemon needs neither numpy nor the store.
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
    from daemon.query.rank import check_compatible, search_store
    from daemon.store.store import Store

    _check_query(query, k)
    with Store.open_readonly(config.store.path) as store:
        embedder = LlamaEmbedder(
            config.model.path,
            EmbedderSettings(
                threads=config.model.threads,
                batch_tokens=config.model.batch_tokens,
                gpu_layers=config.model.gpu_layers,
            ),
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
    embedder = LlamaEmbedder(
        config.model.path,
        EmbedderSettings(threads=config.model.threads, gpu_layers=config.model.gpu_layers),
    )
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
    use_daemon: bool = True,
) -> None:
    """``embedd search``: rank and print; ``sink`` searches that ``[[sink]]`` instead of the store."""
    if sink is None and source_prefix is not None:
        raise UsageError("--source-prefix needs --sink")
    if sink is not None:
        result = run_sink_search(config, sink, query, k, source_prefix=source_prefix)
    else:
        result = run_search(config, query, k, use_daemon=use_daemon)
    for note in result.notes:
        err.write(f"embedd search: note: {note}\n")
    if as_json:
        print_json(result.to_json(), out)
    else:
        render_result(result, out)
