"""The daemon as the API sees it: the scheduler for embeddings, the published store snapshot, status."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from daemon.embed.embedder import FloatMatrix
from daemon.embed.scheduler import Priority, Scheduler
from daemon.errors import SchedulerClosedError
from daemon.serve.app import Phase
from daemon.service.events import EventLog
from daemon.service.metrics import Metrics
from daemon.store.snapshot import Published, Snapshot


class DaemonBackend:
    """Implements ``daemon.serve.app.Backend`` over the running daemon's parts."""

    def __init__(
        self,
        scheduler: Scheduler,
        published: Published,
        *,
        query_prefix: str,
        status: Callable[[], dict[str, Any]],
        stop: threading.Event,
        events: EventLog | None = None,
        metrics: Metrics | None = None,
        forget: Callable[[str], Future[list[str]]] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._published = published
        self._query_prefix = query_prefix
        self._status = status
        self._stop = stop
        self._ready = threading.Event()
        self.events = events or EventLog()
        self.metrics = metrics or Metrics()
        self._forget = forget
        self._files: Callable[[str | None, str | None, int, int], dict[str, Any]] | None = None

    def mark_ready(self) -> None:
        """The startup reconcile is done: /healthz turns 200."""
        self._ready.set()

    @property
    def phase(self) -> Phase:
        if self._stop.is_set():
            return "stopping"
        return "ready" if self._ready.is_set() else "starting"

    @property
    def model(self) -> str:
        return self._scheduler.embedder.name

    @property
    def dimension(self) -> int:
        return self._scheduler.embedder.dimension

    @property
    def query_prefix(self) -> str:
        return self._query_prefix

    def embed(self, texts: list[str]) -> Future[FloatMatrix]:
        return self._scheduler.submit(texts, Priority.QUERY)

    def count_tokens(self, text: str) -> int:
        return self._scheduler.embedder.count_tokens(text)

    def snapshot(self) -> Snapshot:
        return self._published.current()

    def status(self) -> dict[str, Any]:
        return self._status()

    def watch_files(self, files: Callable[[str | None, str | None, int, int], dict[str, Any]]) -> None:
        """Where ``/v1/files`` is answered from (``Service.files``)."""
        self._files = files

    def files(self, state: str | None, prefix: str | None, limit: int, offset: int) -> dict[str, Any]:
        if self._files is None:
            return {"files": [], "total": 0, "next_offset": None}
        return self._files(state, prefix, limit, offset)

    def watch_forget(self, forget: Callable[[str], Future[list[str]]]) -> None:
        """Where forget requests go (the worker's ``ForgetJobs.submit``)."""
        self._forget = forget

    def forget(self, prefix: str) -> Future[list[str]]:
        if self._forget is None:
            raise SchedulerClosedError("the worker is not running")
        return self._forget(prefix)
