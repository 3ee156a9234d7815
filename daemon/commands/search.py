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
from daemon.errors import BadTextError, DaemonRequestError, DaemonUnavailable, EmbeddError, UsageError
from daemon.query.hit import Hit, render_hits
from daemon.query.options import Filters, SearchOptions, check_query, to_body


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
    mode: str | None = None

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
        if self.mode is not None:
            doc["mode"] = self.mode
        return doc


def run_search(
    config: Config, query: str, k: int, *, use_daemon: bool = True, options: SearchOptions | None = None
) -> SearchResult:
    """Search ``config``'s store: through the running daemon when one answers, else here.

    ``options`` (mode, filters, grouping) default to a hybrid search of ``k`` hits. Raises
    StoreError when there is no store, ModelError when the model cannot be loaded and
    FingerprintMismatchError when the store was built with another model.
    """
    opts = options or SearchOptions(k=k)
    _check_query(query, opts.k)
    if use_daemon:
        answered = search_via_daemon(config, query, opts.k, options=opts)
        if answered is not None:
            return answered
    return search_here(config, query, opts.k, options=opts)


def search_via_daemon(
    config: Config, query: str, k: int, *, options: SearchOptions | None = None
) -> SearchResult | None:
    """The running daemon's answer; None when no daemon for this store answers (or it is starting)."""
    from daemon.serve.client import DaemonClient

    client = DaemonClient.for_config(config)
    if client is None:
        return None
    try:
        doc = client.request("POST", "/v1/search", to_body(query, options or SearchOptions(k=k)))
    except DaemonUnavailable:
        return None
    except DaemonRequestError as exc:
        if exc.status == 503:
            return None  # starting or stopping: the store on disk answers meanwhile
        if exc.status == 422:
            raise BadTextError(f"the query is too long: {exc.message}") from exc
        if exc.status == 400:
            raise UsageError(exc.message) from exc
        raise EmbeddError(f"the daemon at {client.where} refused the search: {exc.message}") from exc
    if doc.get("store") != str(config.store.path):
        return None  # a daemon of another store answers on this socket
    hits = tuple(Hit.from_json(h) for h in doc["results"])
    notes = tuple(str(n) for n in doc.get("notes", ()))
    return SearchResult(
        query, config.store.path, str(doc["model"]), int(doc["searched"]), hits, notes, mode=doc.get("mode")
    )


def search_here(config: Config, query: str, k: int, *, options: SearchOptions | None = None) -> SearchResult:
    """Search ``config``'s store with ``config``'s model, loaded for this one query (not in keyword mode).

    The keyword sidecar is only read: when it lags behind the store (no daemon brought it up to
    date), one is built in memory for this search, and a note says so.
    """
    # Imported here: a search answered by the daemon needs neither numpy nor the store.
    from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
    from daemon.query.rank import check_compatible
    from daemon.query.search import search_snapshot
    from daemon.store.store import Store

    opts = options or SearchOptions(k=k)
    _check_query(query, opts.k)
    with Store.open_readonly(config.store.path) as store:
        notes: list[str] = []
        if opts.mode != "vector":
            _, note = store.keyword_reader()
            if note:
                notes.append(note)
        snap = store.snapshot()
        vector = None
        model = store.model
        if opts.needs_vector:
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
                vector = embedder.embed([config.model.query_prefix + query])[0]
                model = model or embedder.name
            finally:
                embedder.close()
        hits: list[Hit] = []
        if store.count:
            outcome = search_snapshot(snap, query, vector, opts)
            hits = outcome.hits
            notes += outcome.notes
        if store.fingerprint is None and store.count:
            notes.append(
                f"the store {store.path} records no fingerprint (written by another tool), so it "
                "cannot be confirmed that its vectors come from the configured model",
            )
        return SearchResult(query, store.path, model, store.count, tuple(hits), tuple(notes), mode=opts.mode)


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
    check_query(query)
    SearchOptions(k=k)  # checks k


def _check_sink_options(opts: SearchOptions) -> None:
    f = opts.filters
    refused = []
    if opts.mode not in ("vector", "hybrid"):
        refused.append(f"--mode {opts.mode}")
    if f.formats:
        refused.append("--format")
    if f.modified_after is not None or f.modified_before is not None:
        refused.append("--modified-after/--modified-before")
    if opts.group_by != "chunk":
        refused.append("--group-by")
    if refused:
        raise UsageError(
            f"{', '.join(refused)}: a sink is searched by its engine's vector search, which filters by "
            "--source-prefix only; search the JSON store (without --sink) for these"
        )


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
    options: SearchOptions | None = None,
) -> None:
    """``embedd search``: rank and print; ``sink`` searches that ``[[sink]]`` instead of the store.

    A sink ranks by vectors only and filters by source prefix only: other modes, filters and
    grouping are refused for it (UsageError).
    """
    opts = options or SearchOptions(k=k, filters=Filters(source_prefix))
    if sink is not None:
        _check_sink_options(opts)
        result = run_sink_search(config, sink, query, opts.k, source_prefix=opts.filters.source_prefix)
    else:
        result = run_search(config, query, opts.k, use_daemon=use_daemon, options=opts)
    for note in result.notes:
        err.write(f"embedd search: note: {note}\n")
    if as_json:
        print_json(result.to_json(), out)
    else:
        render_result(result, out)
