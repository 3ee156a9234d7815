"""The local API inside the running daemon: what it answers with, when it starts and stops, reloads.

The listeners open before the startup reconcile (``/healthz`` says 503 "starting" until it is
done), close as soon as a stop is asked for (requests in flight are still answered), and are
set up again when SIGHUP brings a changed ``[serve]`` section.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon.config import Config, ServeConfig
from daemon.embed.scheduler import Scheduler
from daemon.errors import ServeError
from daemon.serve.backend import DaemonBackend
from daemon.serve.server import ApiServer, read_token
from daemon.service.events import EventLog
from daemon.service.metrics import Metrics
from daemon.sinks.sync import SinkStatus
from daemon.store.snapshot import Published

log = structlog.get_logger("embedd")


class Serving:
    """The API of one daemon; ``start`` before the worker runs, ``stop`` after it returned."""

    def __init__(
        self, config: Config, scheduler: Scheduler, published: Published, stop: threading.Event
    ) -> None:
        self._config = config
        self._scheduler = scheduler
        self._published = published
        self._stop = stop
        self._started = time.monotonic()
        self._activity: Callable[[], dict[str, object]] = dict
        # The events feed and the metrics: notices listeners (``runner``) that the API reads.
        self.events = EventLog()
        self.metrics = Metrics()
        self.metrics.watch(
            activity=self._current_activity,
            scheduler=scheduler.stats,
            # LlamaEmbedder's thread count (it follows the load with threads = 0).
            threads=lambda: int(getattr(scheduler.embedder, "threads", 0)),
            published=published,
        )
        self.backend = DaemonBackend(
            scheduler,
            published,
            query_prefix=config.model.query_prefix,
            status=self.status,
            stop=stop,
            events=self.events,
            metrics=self.metrics,
        )
        self._server: ApiServer | None = None

    def start(self) -> None:
        """Open the listeners of ``[serve]``; raises ServeError when one cannot be set up."""
        self._server = self._open(self._config.serve)

    def _open(self, serve: ServeConfig) -> ApiServer | None:
        if not serve.enabled:
            log.info("api_off", hint="set [serve] socket or tcp to answer searches and embeddings")
            return None
        server = ApiServer(serve, self.backend)
        server.start(self._stop)
        return server

    def watch_activity(self, activity: Callable[[], dict[str, object]]) -> None:
        """Where the worker's queue and bulk progress are read from (``Service.activity``)."""
        self._activity = activity

    def _current_activity(self) -> dict[str, object]:
        return self._activity()

    def watch_sinks(self, sinks: Callable[[], list[SinkStatus]]) -> None:
        """Where each sink's queue is read from for the metrics (``Mirror.status``)."""
        self.metrics.watch(sinks=sinks)

    def ready(self) -> None:
        """The startup reconcile is done."""
        self.backend.mark_ready()

    def reloading(self, reloader: Callable[[], Config | None]) -> Callable[[], Config | None]:
        """``reloader`` that also applies a changed ``[serve]`` section (on SIGHUP)."""

        def reload() -> Config | None:
            new = reloader()
            if new is not None and self._changed(new.serve):
                self._apply(new)
            elif new is not None:
                self._config = new
            return new

        return reload

    def _changed(self, serve: ServeConfig) -> bool:
        """A different [serve] section, or a new token in the same token file."""
        if serve != self._config.serve:
            return True
        if self._server is None or serve.token_file is None or serve.tcp is None:
            return False
        try:
            return read_token(serve.token_file) != self._server.token
        except ServeError as exc:
            log.error(
                "api_reload_failed", reason=str(exc), hint="the running listeners keep the token they have"
            )
            return False

    def _apply(self, new: Config) -> None:
        old = self._config
        if self._server is not None:
            self._server.stop()
            self._server = None
        try:
            self._server = self._open(new.serve)
            self._config = new
            log.info("api_reloaded", listeners=[f"{x.kind} {x.address}" for x in self.listeners()])
        except ServeError as exc:
            log.error("api_reload_failed", reason=str(exc), hint="keeping the previous [serve] settings")
            try:
                self._server = self._open(old.serve)
            except ServeError as again:
                log.error("api_down", reason=str(again), hint="fix [serve] and send SIGHUP again")

    def listeners(self) -> list[Any]:
        return list(self._server.listeners) if self._server is not None else []

    def stop(self) -> None:
        """Stop accepting, answer what is in flight, remove the socket file."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: ``embedd status --json`` with this daemon's live state as ``daemon``."""
        from daemon.commands.status import status_document

        doc = status_document(self._config)
        snap = self._published.current()
        doc["daemon"] = {
            "running": True,
            "pid": os.getpid(),
            "phase": self.backend.phase,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "in_memory": {"files": snap.files, "chunks": snap.count},
            "embedder": self._scheduler.stats().to_json(),
            "listeners": [x.to_json() for x in self.listeners()],
            # Last: the worker's account (its in_memory is read at the same instant as its counts).
            **self._activity(),
        }
        return doc
