"""The daemon mirrors its store into each engine: the same story, run by the real CLI, on every
backend (Milvus Lite, Qdrant local, Chroma folder, LanceDB folder, Milvus server, Chroma server).

index -> edit, rename, delete while running -> a change made while stopped, picked up at the
restart -> wipe, `embedd sink sync`, and a second sync that writes nothing -> a second daemon
sharing the collection -> `embedd search --sink` over both daemons' rows.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sink_support import ALL, Backend, make_backend, unique_collection
from support import Daemon, cli, read_store, wait_for, write_config

from daemon.config import load_config
from daemon.sinks.base import BaseSink, fingerprint_digest
from daemon.sinks.queue import SinkQueue, queue_path
from daemon.sinks.registry import open_sink

DOCS = {
    "orchard.md": "Apple orchards need pruning in late winter before the buds open. " * 4,
    "glacier.md": "Glaciers carve valleys as they slide downhill under their own weight. " * 4,
    "harbour.txt": "The harbour master schedules tugboats for container ships at dawn. " * 4,
}
Rows = dict[str, list[tuple[int, str, int]]]


@pytest.fixture(params=ALL)
def e2e_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    shared = tmp_path / "shared"
    shared.mkdir()
    return make_backend(request.param, request, shared)


def _config(root: Path, name: str, backend: Backend, collection: str, model: Path) -> Path:
    sink = f'[[sink]]\ntype = "{backend.type}"\nuri = "{backend.uri}"\ncollection = "{collection}"\n'
    return write_config(root, model, watch=f"inbox-{name}", extra=sink, daemon=f'name = "{name}"')


def _sink(cfg_path: Path) -> BaseSink:
    config = load_config(cfg_path)
    store = read_store(config.store.path)
    assert store is not None
    return open_sink(
        config.sinks[0],
        daemon=config.daemon.name,
        dimensions=store["dimensions"],
        fingerprint=fingerprint_digest(store["fingerprint"]),
    )


def _expected(cfg_path: Path) -> Rows:
    store = read_store(load_config(cfg_path).store.path)
    assert store is not None
    out: Rows = {}
    for e in store["embeddings"]:
        m = e["metadata"]
        out.setdefault(m["source"], []).append((m["chunk"], m["hash"], e["timestamp"]))
    return {k: sorted(v) for k, v in out.items()}


def _actual(cfg_path: Path) -> Rows:
    sink = _sink(cfg_path)
    try:
        return {s: sorted((r.chunk, r.hash, r.timestamp) for r in sink.rows_for(s)) for s in sink.sources()}
    finally:
        sink.close()


def _synced(cfg_path: Path, store_ok: Callable[[dict[str, Any]], bool]) -> None:
    """Wait until the store passes ``store_ok`` and the sink's queue holds nothing more.

    Sources are marked in the queue (durably) before the store that holds their change is
    saved, so once the store shows a change, an empty queue means the sink has it.
    """
    config = load_config(cfg_path)

    def done() -> bool:
        store = read_store(config.store.path)
        if store is None or not store_ok(store):
            return False
        lag = SinkQueue.read_lag(queue_path(config.store.path, config.sinks[0].name))
        return lag is not None and lag.pending == 0 and not lag.full_sync

    wait_for(done, what="the store change to reach the sink")


def _sources(store: dict[str, Any]) -> set[str]:
    return {e["metadata"]["source"] for e in store["embeddings"]}


@contextmanager
def _running(cfg_path: Path, env: dict[str, str]) -> Iterator[Daemon]:
    daemon = Daemon(cfg_path, env).ready()
    try:
        yield daemon
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_path.read_text()[-3000:]


def test_the_collection_follows_the_store(
    e2e_backend: Backend, tmp_path: Path, cli_env: dict[str, str], default_model: Path
) -> None:
    collection = unique_collection("docs")
    cfg = _config(tmp_path / "a", "alpha", e2e_backend, collection, default_model)
    inbox = tmp_path / "a" / "inbox-alpha"
    mine = {f"inbox-alpha/{n}" for n in DOCS}

    with _running(cfg, cli_env):
        for name, text in DOCS.items():
            (inbox / name).write_text(text)
        _synced(cfg, lambda s: _sources(s) == mine)
        # Edit, rename and delete while the daemon runs.
        (inbox / "orchard.md").write_text(DOCS["orchard.md"] + "\n\nPears too, in a paragraph about pears.")
        (inbox / "glacier.md").rename(inbox / "ice.md")
        (inbox / "harbour.txt").unlink()
        _synced(
            cfg,
            lambda s: (
                _sources(s) == {"inbox-alpha/orchard.md", "inbox-alpha/ice.md"}
                and any("Pears" in e["content"] for e in s["embeddings"])
            ),
        )
    expected = _expected(cfg)
    assert set(expected) == {"inbox-alpha/orchard.md", "inbox-alpha/ice.md"}
    assert _actual(cfg) == expected

    # A file added while the daemon is stopped reaches the sink after the restart.
    (inbox / "harbour.txt").write_text(DOCS["harbour.txt"])
    with _running(cfg, cli_env):
        _synced(cfg, lambda s: "inbox-alpha/harbour.txt" in _sources(s))
    assert _actual(cfg) == _expected(cfg)

    # A wipe, then `embedd sink sync`, restores it exactly; a second sync changes nothing.
    sink = _sink(cfg)
    try:
        sink.wipe()
        assert sink.count() == 0
    finally:
        sink.close()
    first = cli(["sink", "sync", "--config", str(cfg)], cli_env)
    assert first.returncode == 0, first.stderr
    assert f"{sum(map(len, _expected(cfg).values()))} rows written" in first.stdout, first.stdout
    again = cli(["sink", "sync", "--config", str(cfg)], cli_env)
    assert again.returncode == 0 and " 0 rows written" in again.stdout and " 0 deleted" in again.stdout, again
    assert _actual(cfg) == _expected(cfg)

    # A second daemon writes into the same collection; neither touches the other's rows.
    cfg_b = _config(tmp_path / "b", "beta", e2e_backend, collection, default_model)
    with _running(cfg_b, cli_env):
        (tmp_path / "b" / "inbox-beta" / "glacier.md").write_text(DOCS["glacier.md"])
        _synced(cfg_b, lambda s: _sources(s) == {"inbox-beta/glacier.md"})
    assert _actual(cfg_b) == _expected(cfg_b)
    assert _actual(cfg) == _expected(cfg)

    # Searching the sink sees every daemon's rows, and the source prefix narrows it.
    found = cli(
        ["search", "--config", str(cfg), "--sink", collection, "--json", "valleys carved by ice"], cli_env
    )
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert {(r["source"], r["daemon"]) for r in results[:2]} == {
        ("inbox-beta/glacier.md", "beta"),
        ("inbox-alpha/ice.md", "alpha"),
    }
    narrowed = cli(
        [
            "search",
            "--config",
            str(cfg),
            "--sink",
            collection,
            "--source-prefix",
            "inbox-alpha/",
            "--json",
            "ice",
        ],
        cli_env,
    )
    assert narrowed.returncode == 0, narrowed.stderr
    got = json.loads(narrowed.stdout)["results"]
    assert got and {r["daemon"] for r in got} == {"alpha"}
