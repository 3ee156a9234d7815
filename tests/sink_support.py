"""What the sink tests share: synthetic rows, the engines to run them on, and the mirror check.

``Backend`` is one engine at one place (a local folder or a server on loopback); every sink
test that is not about one engine runs on each of them through the ``backend`` fixture
(tests/sinks/conftest.py). The store is stood in for by a dict of rows: what matters is that
the collection ends up equal to it, row for row.
"""

from __future__ import annotations

import importlib.util
import itertools
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import Daemon, read_store, wait_for

from daemon.config import SinkConfig, load_config
from daemon.sinks.base import Sink, SinkRow, fingerprint_digest, row_id
from daemon.sinks.queue import SinkQueue, queue_path
from daemon.sinks.registry import open_sink

DIMS = 16
FP = fingerprint_digest({"model_sha256": "0" * 64, "pooling": "mean", "normalize": True, "chunk_size": 500})
# File names that break naive filter strings: quotes, backslashes, LIKE wildcards, newlines.
AWKWARD = [
    'docs/say "hi".md',
    "docs/back\\slash.txt",
    "docs/100%_done.md",
    "docs/it's.txt",
    "docs/tab\there.txt",
    "docs/new\nline.txt",
    "docs/ünïcødé ✓.md",
]

Store = dict[str, list[SinkRow]]
_names = itertools.count()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_rows(source: str, n: int, seed: int, *, pages: bool = False, start: int = 0) -> list[SinkRow]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        SinkRow(
            vector=vecs[i],
            content=f"chunk {start + i} of {source} (seed {seed})",
            source=source,
            page=(i // 2 + 1) if pages else None,
            chunk=start + i,
            timestamp=1_700_000_000_000 + seed * 1000 + i,
            hash=f"{seed:08x}{i:056x}",
        )
        for i in range(n)
    ]


def assert_mirrors(sink: Sink, store: Store) -> None:
    """The sink holds exactly the store's rows for its daemon, field for field."""
    expected = {s for s, rows in store.items() if rows}
    assert sink.sources() == expected
    assert sink.count() == sum(len(rows) for rows in store.values())
    for source in expected:
        got = sink.rows_for(source)
        want = sorted(store[source], key=lambda r: r.chunk)
        assert [g.id for g in got] == [row_id(sink.daemon, source, r.chunk) for r in want]
        for g, w in zip(got, want, strict=True):
            assert (g.source, g.chunk, g.page, g.content, g.hash, g.timestamp, g.daemon) == (
                w.source,
                w.chunk,
                w.page,
                w.content,
                w.hash,
                w.timestamp,
                sink.daemon,
            )
            np.testing.assert_allclose(g.vector, w.vector, rtol=1e-6, atol=1e-7)


@dataclass
class Backend:
    """One engine at one place: ``uri`` is a server URL or a local folder (``fresh`` makes one)."""

    id: str
    type: str
    uri: str
    local: bool  # one process at a time (the engine's file or folder)
    foreign: Callable[[str, str], None] | None = field(default=None, repr=False)

    def config(self, collection: str, *, name: str = "mirror", uri: str | None = None) -> SinkConfig:
        return SinkConfig(name=name, type=self.type, uri=uri or self.uri, collection=collection)

    def sink(
        self,
        collection: str,
        *,
        daemon: str = "alpha",
        fp: str = FP,
        dims: int = DIMS,
        timeout: float = 5.0,
        name: str = "mirror",
        uri: str | None = None,
    ) -> Sink:
        return open_sink(
            self.config(collection, name=name, uri=uri),
            daemon=daemon,
            dimensions=dims,
            fingerprint=fp,
            timeout_s=timeout,
        )

    def make_foreign(self, collection: str) -> None:
        """Make a collection of ``DIMS`` vectors the way a user of the engine would, not embedd."""
        assert self.foreign is not None
        self.foreign(self.uri, collection)


def unique_collection(hint: str) -> str:
    """A collection name no other test uses (servers are shared by the whole session)."""
    clean = "".join(ch if ch.isalnum() else "_" for ch in hint)[:40].strip("_") or "c"
    return f"c{next(_names)}_{clean}x"


# ----- collections not made by embedd, one way per engine -----


def foreign_milvus(uri: str, collection: str) -> None:
    from pymilvus import MilvusClient  # type: ignore[import-untyped]

    client = MilvusClient(uri)
    try:
        client.create_collection(collection, dimension=DIMS)
    finally:
        client.close()
    if uri.endswith(".db"):  # stop the Lite server pymilvus started here, freeing the folder
        from milvus_lite.server_manager import server_manager_instance  # type: ignore[import-untyped]

        server_manager_instance.release_server(str(Path(uri).absolute()))


def foreign_qdrant(uri: str, collection: str) -> None:
    from qdrant_client import QdrantClient, models

    from daemon.sinks import qdrant as engine

    # This process may hold the folder open already (a keeper sink): use that client then.
    shared = engine._local_clients.get(str(Path(uri).absolute()))
    client: Any = shared[0] if shared else QdrantClient(path=uri)
    try:
        client.create_collection(
            collection, vectors_config=models.VectorParams(size=DIMS, distance=models.Distance.COSINE)
        )
    finally:
        if not shared:
            client.close()


def foreign_chroma(uri: str, collection: str) -> None:
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if "://" in uri:
        host, port = uri.split("://", 1)[1].rsplit(":", 1)
        client: Any = chromadb.HttpClient(host=host, port=int(port), settings=settings)
    else:
        client = chromadb.PersistentClient(path=uri, settings=settings)
    try:
        client.create_collection(collection, embedding_function=None)
    finally:
        client.close()
        for owner in (client, getattr(client, "_admin_client", None)):  # see ChromaSink._drop
            session = getattr(getattr(owner, "_server", None), "_session", None)
            if session is not None:
                session.close()


def foreign_lancedb(uri: str, collection: str) -> None:
    import lancedb
    import pyarrow as pa  # type: ignore[import-untyped]

    schema = pa.schema([pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), DIMS))])
    lancedb.connect(uri).create_table(collection, schema=schema)


# ----- the backends -----

LOCAL = {
    "milvus-lite": ("milvus", "lite.db", foreign_milvus, ("pymilvus", "milvus_lite")),
    "qdrant-local": ("qdrant", "qdrant", foreign_qdrant, ("qdrant_client",)),
    "chroma-local": ("chroma", "chroma", foreign_chroma, ("chromadb",)),
    "lancedb-local": ("lancedb", "lance", foreign_lancedb, ("lancedb",)),
}
SERVERS = ("milvus-server", "chroma-server")
ALL = (*LOCAL, *SERVERS)


def need(*modules: str) -> None:
    """Skip the test unless these modules are installed (the dev extra installs them all)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


def make_backend(kind: str, request: pytest.FixtureRequest, folder: Path) -> Backend:
    """The backend ``kind`` (an id of ``ALL``), with a fresh local folder under ``folder``."""
    if kind in LOCAL:
        engine, name, foreign, modules = LOCAL[kind]
        need(*modules)
        return Backend(kind, engine, str(folder / name), local=kind != "lancedb-local", foreign=foreign)
    if kind == "milvus-server":
        server = request.getfixturevalue("milvus_server")
        return Backend(kind, "milvus", server.uri, local=False, foreign=foreign_milvus)
    server = request.getfixturevalue("chroma_server")
    return Backend(kind, "chroma", server.uri, local=False, foreign=foreign_chroma)


# ----- a daemon mirroring into a sink (the real CLI in a subprocess) -----

DOCS = {
    "orchard.md": "Apple orchards need pruning in late winter before the buds open. " * 4,
    "glacier.md": "Glaciers carve valleys as they slide downhill under their own weight. " * 4,
    "harbour.txt": "The harbour master schedules tugboats for container ships at dawn. " * 4,
}
Rows = dict[str, list[tuple[int, str, int]]]


def sink_for(cfg_path: Path) -> Sink:
    config = load_config(cfg_path)
    store = read_store(config.store.path)
    assert store is not None
    return open_sink(
        config.sinks[0],
        daemon=config.daemon.name,
        dimensions=store["dimensions"],
        fingerprint=fingerprint_digest(store["fingerprint"]),
    )


def expected_rows(cfg_path: Path) -> Rows:
    store = read_store(load_config(cfg_path).store.path)
    assert store is not None
    out: Rows = {}
    for e in store["embeddings"]:
        m = e["metadata"]
        out.setdefault(m["source"], []).append((m["chunk"], m["hash"], e["timestamp"]))
    return {k: sorted(v) for k, v in out.items()}


def actual_rows(cfg_path: Path) -> Rows:
    sink = sink_for(cfg_path)
    try:
        return {s: sorted((r.chunk, r.hash, r.timestamp) for r in sink.rows_for(s)) for s in sink.sources()}
    finally:
        sink.close()


def synced(cfg_path: Path, store_ok: Callable[[dict[str, Any]], bool]) -> None:
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


def store_sources(store: dict[str, Any]) -> set[str]:
    return {e["metadata"]["source"] for e in store["embeddings"]}


@contextmanager
def running(cfg_path: Path, env: dict[str, str]) -> Iterator[Daemon]:
    daemon = Daemon(cfg_path, env).ready()
    try:
        yield daemon
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_path.read_text()[-3000:]
