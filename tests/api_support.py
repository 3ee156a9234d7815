"""What the API tests share: the documents the in-process server's store holds, its token,
and the handle on the running server (``tests/serve/conftest.py`` builds it).

A module of its own, not conftest: every test folder has a conftest.py, and importing one by
name picks whichever was imported first.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder
from daemon.embed.scheduler import Priority, Scheduler
from daemon.serve.backend import DaemonBackend
from daemon.store.format import content_hash
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

TOKEN = "s3cret-token-for-tests"
DOCS = {
    "inbox/harbour.txt": [
        "Meeting notes: the harbour survey starts in May. Bring boots and a torch for the tunnels.",
        "The survey team meets at the old lighthouse at seven in the morning.",
    ],
    "inbox/bread.md": ["A sourdough loaf needs a long, cool rise: twelve hours in the fridge is typical."],
    "inbox/trams.txt": ["The maintenance log of the city trams lists every brake inspection since 2019."],
}


@dataclass
class Api:
    """The running in-process server and its parts."""

    socket: Path
    tcp: tuple[str, int]
    embedder: LlamaEmbedder
    scheduler: Scheduler
    store: Store
    backend: DaemonBackend
    phase_stop: threading.Event

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://embedd", **kw
        )

    def tcp_client(self, token: str | None = TOKEN, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"http://{self.tcp[0]}:{self.tcp[1]}", headers=headers, **kw)


def indexed_store(
    root: Path, model: Path, docs: dict[str, list[str]], mtime_of: dict[str, int] | None = None
) -> tuple[LlamaEmbedder, Scheduler, Store]:
    """The real model on a started scheduler, and a store at ``root`` holding ``docs`` (source ->
    chunk texts) embedded by it; ``mtime_of`` gives each file's recorded mtime (default 1)."""
    embedder = LlamaEmbedder(model, EmbedderSettings(threads=2))
    scheduler = Scheduler(embedder)
    scheduler.start()
    store = Store.open(
        root / "embeddings.json",
        model=embedder.name,
        dimensions=embedder.dimension,
        fingerprint=Fingerprint(embedder.fingerprint, embedder.pooling, True, 500, 50),
    )
    for n, (source, texts) in enumerate(docs.items()):
        vectors = scheduler.embed(texts, Priority.INDEX)
        entries = [
            NewEntry(t, None, i, content_hash(t), v, 1_764_100_000_000)
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
        ]
        mtime = (mtime_of or {}).get(source, 1)
        store.replace_source(source, entries, FileState(10 + n, mtime, 100 + n))
    return embedder, scheduler, store


@contextlib.contextmanager
def serving_docs(
    model: Path, docs: dict[str, list[str]], mtime_of: dict[str, int] | None = None, *, prefix: str
) -> Iterator[tuple[Path, Store]]:
    """The API on a Unix socket in a fresh temp folder, over ``indexed_store(docs)``; yields the
    socket and the store, and stops and removes everything at the end."""
    from daemon.config import ServeConfig
    from daemon.serve.server import ApiServer
    from daemon.store.snapshot import Published

    root = Path(tempfile.mkdtemp(prefix=prefix))
    embedder, scheduler, store = indexed_store(root, model, docs, mtime_of)
    backend = DaemonBackend(
        scheduler, Published(store), query_prefix="", status=lambda: {}, stop=threading.Event()
    )
    backend.mark_ready()
    server = ApiServer(ServeConfig(socket=root / "api.sock", max_body_bytes=256 * 1024), backend)
    server.start()
    try:
        yield root / "api.sock", store
    finally:
        server.stop()
        scheduler.close()
        embedder.close()
        store.close()
        shutil.rmtree(root, ignore_errors=True)
