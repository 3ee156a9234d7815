"""The parts the worker drives, built from the configuration; a test passes its own.

``Service`` does not build its pipeline, debouncer, watcher and saver itself: it calls a
factory with the sink the watcher must feed (the worker's ``push``), so a test can hand in
parts of its choosing (a debouncer and a saver on a fake clock, a watcher never started) and
then step the worker with ``Service.tick``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon.config import Config
from daemon.embed.embedder import Embedder
from daemon.ingest.pipeline import ChunkingParams, Pipeline
from daemon.service.filestate import extract_limits
from daemon.service.notices import Notices
from daemon.service.saver import Saver
from daemon.store.store import Store
from daemon.watch.debounce import Debouncer
from daemon.watch.events import EventSink
from daemon.watch.watcher import Watcher


class Watching(Protocol):
    """What the worker asks of its watcher (``daemon.watch.watcher.Watcher``)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def add_root(self, root: Path, recursive: bool) -> None: ...
    def remove_root(self, root: Path) -> None: ...
    def rewatch(self, root: Path) -> None: ...


@dataclass(frozen=True)
class Parts:
    """The worker's parts: extraction to store, event coalescing, the watch, the saves."""

    pipeline: Pipeline
    debouncer: Debouncer
    watcher: Watching
    saver: Saver


# Given the sink the watcher feeds, the parts of one worker.
PartsFactory = Callable[[EventSink], Parts]


def build_parts(
    config: Config,
    embedder: Embedder,
    store: Store,
    sink: EventSink,
    *,
    clock: Callable[[], float],
    notices: Notices,
) -> Parts:
    """The daemon's own parts for ``config``: what ``Service`` uses when given no factory."""
    chunking = config.chunking
    return Parts(
        pipeline=Pipeline(
            embedder,
            store,
            ChunkingParams(chunking.size, chunking.overlap, chunking.context_prefix),
            extract_limits(config),
        ),
        debouncer=Debouncer(config.daemon.debounce_ms / 1000.0, clock=clock),
        watcher=Watcher([(w.path, w.recursive) for w in config.watches], sink),
        saver=Saver(store, clock, notices),
    )
