"""What the API tests share: the documents the in-process server's store holds, its token,
and the handle on the running server (``tests/serve/conftest.py`` builds it).

A module of its own, not conftest: every test folder has a conftest.py, and importing one by
name picks whichever was imported first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from daemon.embed.embedder import LlamaEmbedder
from daemon.embed.scheduler import Scheduler
from daemon.serve.backend import DaemonBackend
from daemon.store.store import Store

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
