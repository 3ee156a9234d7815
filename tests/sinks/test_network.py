"""What a network sink meets: a server frozen mid-sync (SIGSTOP past the client's timeout, then
SIGCONT), a server not up when the daemon starts, a server replaced by a fresh empty one, and a
server restarted on its own data. Real servers on loopback: the Milvus standalone server over
gRPC and Chroma's ``chroma run`` over HTTP.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import MILVUS_PORTS, MilvusTestServer, free_ports
from sink_support import (
    DOCS,
    Backend,
    FakeClock,
    Store,
    actual_rows,
    assert_mirrors,
    expected_rows,
    make_backend,
    make_rows,
    need,
    running,
    store_sources,
    synced,
    unique_collection,
)
from structlog.testing import capture_logs
from support import read_store, wait_for, write_config

from daemon.config import load_config
from daemon.sinks.queue import SinkQueue, queue_path
from daemon.sinks.sync import SinkSyncer

SERVERS = ("milvus-server", "chroma-server")
TIMEOUT_S = 2.0  # the sinks' request timeout here: a freeze must outlast it


@pytest.fixture(params=SERVERS)
def server_backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Backend, Any]:
    backend = make_backend(request.param, request, tmp_path)
    server = request.getfixturevalue("milvus_server" if backend.type == "milvus" else "chroma_server")
    return backend, server


def _step_within(syncer: SinkSyncer, deadline: float = 120.0) -> int:
    """One syncer step, in a thread: a step that hangs on a frozen server fails the test."""
    out: list[int] = []
    worker = threading.Thread(target=lambda: out.append(syncer.step()), daemon=True)
    worker.start()
    worker.join(deadline)
    assert not worker.is_alive(), "a sink call hung on the frozen server instead of timing out"
    return out[0]


def test_a_frozen_server_times_out_and_the_queue_drains_after_it_resumes(
    server_backend: tuple[Backend, Any], tmp_path: Path
) -> None:
    backend, server = server_backend
    clock = FakeClock()
    collection = unique_collection("frozen")
    sink = backend.sink(collection, timeout=TIMEOUT_S)
    queue = SinkQueue.open(tmp_path / "q.queue", sink="mirror", clock=clock)
    store: Store = {f"f{i}.md": make_rows(f"f{i}.md", 3, i) for i in range(4)}
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=None)
    assert _step_within(syncer) == 4

    server.freeze()
    try:
        store["f1.md"] = make_rows("f1.md", 5, 11)
        store["new.md"] = make_rows("new.md", 2, 12)
        del store["f2.md"]
        queue.mark(["f1.md", "new.md", "f2.md"])
        with capture_logs() as logs:
            assert _step_within(syncer) == 0
    finally:
        server.thaw()
    (err,) = [e for e in logs if e["event"] == "sink_error"]
    assert err["sink"] == "mirror" and err["reason"]
    assert queue.pending() == 3

    clock.now += 60
    with capture_logs() as logs:
        # The failed batch of 3 is retried by halves (one bad source must not fail them all),
        # then the full batch again.
        assert _step_within(syncer) == 1
        assert _step_within(syncer) == 2
    assert "sink_recovered" in [e["event"] for e in logs]
    assert queue.pending() == 0
    assert_mirrors(sink, store)  # nothing lost, nothing twice
    sink.close()
    queue.close()


def _network_config(root: Path, model: Path, uri: str, kind: str, collection: str) -> Path:
    sink = f'[[sink]]\ntype = "{kind}"\nuri = "{uri}"\ncollection = "{collection}"\ntimeout_s = {TIMEOUT_S}\n'
    return write_config(root, model, watch="inbox-alpha", extra=sink, daemon='name = "alpha"')


def _no_duplicates(cfg: Path) -> None:
    """Every store entry is in the sink once: the sink's rows are exactly the store's keys."""
    actual = actual_rows(cfg)
    assert actual == expected_rows(cfg)
    keys = Counter((s, chunk) for s, rows in actual.items() for chunk, _, _ in rows)
    assert max(keys.values(), default=1) == 1


def test_the_daemon_keeps_indexing_while_the_server_is_frozen(
    server_backend: tuple[Backend, Any], tmp_path: Path, cli_env: dict[str, str], default_model: Path
) -> None:
    backend, server = server_backend
    cfg = _network_config(tmp_path, default_model, backend.uri, backend.type, unique_collection("freeze"))
    inbox = tmp_path / "inbox-alpha"
    with running(cfg, cli_env) as daemon:
        (inbox / "orchard.md").write_text(DOCS["orchard.md"])
        synced(cfg, lambda s: store_sources(s) == {"inbox-alpha/orchard.md"})
        server.freeze()
        try:
            (inbox / "glacier.md").write_text(DOCS["glacier.md"])
            (inbox / "harbour.txt").write_text(DOCS["harbour.txt"])
            # Indexing goes on: the store gets both files while the sink cannot answer.
            store_path = load_config(cfg).store.path
            wait_for(
                lambda: len(store_sources(read_store(store_path) or {"embeddings": []})) == 3,
                what="the daemon to index while the sink is frozen",
            )
            daemon.wait_event("sink_error")
        finally:
            server.thaw()
        synced(cfg, lambda s: len(store_sources(s)) == 3)
        assert daemon.events("sink_recovered")
    _no_duplicates(cfg)


def test_a_server_down_at_start_replaced_by_an_empty_one_and_restarted_on_its_data(
    tmp_path: Path, cli_env: dict[str, str], default_model: Path
) -> None:
    need("milvus", "pymilvus")
    port = free_ports(MILVUS_PORTS)
    # A short session TTL lets the restarted server take over its own data in seconds (see
    # tests/servers.py); this test never freezes it.
    first = MilvusTestServer(tmp_path / "server-a", port=port, session_ttl=10)
    second = MilvusTestServer(tmp_path / "server-b", port=port, session_ttl=10)
    cfg = _network_config(tmp_path, default_model, first.uri, "milvus", "docs")
    inbox = tmp_path / "inbox-alpha"
    config = load_config(cfg)
    try:
        with running(cfg, cli_env) as daemon:
            # Nothing listens yet: the daemon starts anyway and indexes.
            assert daemon.events("sink_unavailable")
            (inbox / "orchard.md").write_text(DOCS["orchard.md"])
            wait_for(
                lambda: (
                    read_store(config.store.path) is not None
                    and store_sources(read_store(config.store.path) or {}) == {"inbox-alpha/orchard.md"}
                ),
                what="indexing without the sink",
            )
            lag = SinkQueue.read_lag(queue_path(config.store.path, "docs"))
            assert lag is not None and lag.full_sync and lag.error
            first.start()
            synced(cfg, lambda s: store_sources(s) == {"inbox-alpha/orchard.md"})
            _no_duplicates(cfg)

            # The server is replaced by a new, empty one on the same address. No file changes:
            # the idle sink's probe finds the collection gone and loads the store into it.
            first.kill()
            second.start()
            daemon.wait_event("sink_collection_replaced")
            synced(cfg, lambda s: True)
            wait_for(lambda: actual_rows(cfg) == expected_rows(cfg), what="the new server to hold the store")

            # Restarted on its own data: the rows are still there, and changes made while it was
            # down arrive once it is back.
            second.kill()
            (inbox / "glacier.md").write_text(DOCS["glacier.md"])
            wait_for(
                lambda: len(store_sources(read_store(config.store.path) or {})) == 2,
                what="indexing while it is down",
            )
            second.start()
            synced(cfg, lambda s: len(store_sources(s)) == 2)
            _no_duplicates(cfg)
            assert len(daemon.events("sink_collection_replaced")) == 1  # the same collection came back
    finally:
        first.stop()
        second.stop()
