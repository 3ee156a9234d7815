"""An in-process API server over the real model: real HTTP on a real Unix socket and loopback TCP.

The server runs exactly as in the daemon (``ApiServer`` over ``DaemonBackend`` over the
``Scheduler`` and a published ``Store`` snapshot); only the worker is missing, so the store
holds what the fixture put in it, and the test decides when the daemon is "ready" or "stopping".
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import DOCS, TOKEN, Api, indexed_store

from daemon.config import ServeConfig
from daemon.serve.backend import DaemonBackend
from daemon.serve.server import ApiServer, HeaderDeadlineH11Protocol
from daemon.store.snapshot import Published


@pytest.fixture(scope="module")
def api(default_model: Path) -> Iterator[Api]:
    # A short folder: a Unix socket path holds at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="embedd-api-"))
    old_timeout = HeaderDeadlineH11Protocol.header_timeout
    HeaderDeadlineH11Protocol.header_timeout = 1.0  # the slowloris test waits for it
    embedder, scheduler, store = indexed_store(root, default_model, DOCS)
    published = Published(store)
    phase_stop = threading.Event()
    backend = DaemonBackend(
        scheduler, published, query_prefix="", status=lambda: {"daemon": {"running": True}}, stop=phase_stop
    )
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    serve = ServeConfig(
        socket=root / "api.sock", tcp=("127.0.0.1", 0), token_file=token_file, max_body_bytes=64 * 1024
    )
    server = ApiServer(serve, backend)
    server.start()
    port = int(server.listeners[1].address.rsplit(":", 1)[1])
    try:
        yield Api(root / "api.sock", ("127.0.0.1", port), embedder, scheduler, store, backend, phase_stop)
    finally:
        server.stop()
        scheduler.close()
        embedder.close()
        store.close()
        HeaderDeadlineH11Protocol.header_timeout = old_timeout
        for p in root.iterdir():
            p.unlink()
        root.rmdir()


@pytest.fixture
def ready(api: Api) -> Api:
    """The API in its "ready" phase (the startup reconcile done)."""
    api.phase_stop.clear()
    api.backend.mark_ready()
    return api
