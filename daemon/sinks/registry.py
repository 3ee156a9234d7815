"""Which module serves each ``[[sink]] type``, and opening a sink by its configuration.

The engines' clients are optional extras (``pip install 'embedd[qdrant]'``). Whether one is
installed is looked up without importing it (``importlib.util.find_spec``), so checking a
configuration stays fast; the client is imported when a sink first connects.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.errors import ConfigError
from daemon.sinks.base import Sink, SinkSettings, read_secret

__all__ = ["ENGINES", "Engine", "check_sinks", "engine_for", "open_sink"]


@dataclass(frozen=True)
class Engine:
    """One engine: where its sink class lives and how its client is installed."""

    kind: str  # the [[sink]] type
    module: str
    cls: str
    extra: str  # the pip extra that installs its client

    def sink_class(self) -> type[Sink]:
        """The engine's sink class (its module imports the client only when a sink connects)."""
        cls: object = getattr(importlib.import_module(self.module), self.cls)
        if not (isinstance(cls, type) and issubclass(cls, Sink)):
            raise TypeError(f"{self.module}.{self.cls} is not a sink class")
        return cls

    def missing_modules(self, uri: str) -> list[str]:
        """The client modules ``uri`` needs that are not installed."""
        return [m for m in self.sink_class().client_modules(uri) if importlib.util.find_spec(m) is None]

    @property
    def pip(self) -> str:
        """The command that installs the client."""
        return f"pip install 'embedd[{self.extra}]'"


ENGINES: dict[str, Engine] = {
    "milvus": Engine("milvus", "daemon.sinks.milvus", "MilvusSink", "milvus"),
    "qdrant": Engine("qdrant", "daemon.sinks.qdrant", "QdrantSink", "qdrant"),
    "chroma": Engine("chroma", "daemon.sinks.chroma", "ChromaSink", "chroma"),
    "lancedb": Engine("lancedb", "daemon.sinks.lancedb", "LanceDBSink", "lancedb"),
}


def engine_for(kind: str, field: str = "sink.type") -> Engine:
    """The engine of ``[[sink]] type = kind``; ConfigError when there is none."""
    try:
        return ENGINES[kind]
    except KeyError:
        raise ConfigError(field, kind, f"must be one of: {', '.join(ENGINES)}") from None


def check_sinks(sinks: Sequence[SinkSettings]) -> None:
    """Raise ConfigError for a sink that cannot start: its client is not installed, its
    collection name does not suit the engine, or its key file cannot be read.

    Run before anything slow (loading the model), so a daemon with such a sink exits at once.
    """
    for index, cfg in enumerate(sinks):
        field = f"sink[{index}]"
        engine = engine_for(cfg.type, f"{field}.type")
        missing = engine.missing_modules(cfg.uri)
        if missing:
            raise ConfigError(
                f"{field}.type",
                cfg.type,
                f"the {cfg.type} client is not installed (no module {', '.join(missing)}); "
                f"install it with: {engine.pip}",
            )
        reason = engine.sink_class().check_collection(cfg.collection)
        if reason is not None:
            raise ConfigError(f"{field}.collection", cfg.collection, reason)
        read_secret(cfg, f"{field}.api_key_file")


def open_sink(
    cfg: SinkSettings, *, daemon: str, dimensions: int, fingerprint: str, timeout_s: float | None = None
) -> Sink:
    """A sink for ``cfg`` (not yet connected); run ``check_sinks`` on the configuration first."""
    return engine_for(cfg.type).sink_class()(
        cfg, daemon=daemon, dimensions=dimensions, fingerprint=fingerprint, timeout_s=timeout_s
    )
