"""What every sink shares: the ``Sink`` protocol, the rows it receives, and the keys and checks
that make several daemons' rows in one collection safe.

The JSON store stays the daemon's source of truth; a sink holds a copy of its rows in a
vector database collection that several daemons may share. Every row carries the daemon's
name and its primary key is derived from (daemon, source, chunk position), so each daemon
reads, replaces and deletes only its own rows, and writing the same source twice changes
nothing. Nothing here imports an engine's client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from daemon.errors import ConfigError

__all__ = [
    "DAEMON_MAX_BYTES",
    "RowDigest",
    "Sink",
    "SinkRow",
    "SinkSettings",
    "check_daemon_name",
    "fingerprint_digest",
    "fit_utf8",
    "prefix_successor",
    "row_id",
]

DAEMON_MAX_BYTES = 256


class SinkSettings(Protocol):
    """What a sink needs of its ``[[sink]]`` table (``daemon.config.SinkConfig`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def uri(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def token(self) -> str | None: ...


@dataclass(frozen=True)
class SinkRow:
    """One stored chunk as a sink receives it; ``vector`` is a float32 (dimensions,) array it may keep."""

    vector: npt.NDArray[np.float32]
    content: str
    source: str
    page: int | None
    chunk: int
    timestamp: int  # ms since the epoch, as in the store
    hash: str


class RowDigest(NamedTuple):
    """What tells a sink row is the store's row with the same key, without reading its vector."""

    hash: str
    page: int | None
    timestamp: int


class Sink(Protocol):
    """A place the store is mirrored into.

    Methods raise SinkError; no single request waits longer than the sink's timeout. A sink
    reconnects by itself on the next call after an error or ``close``.
    """

    @property
    def name(self) -> str: ...

    @property
    def local(self) -> bool:
        """True when the sink is a file only one process can open at a time (Milvus Lite)."""
        ...

    def connect(self) -> None: ...
    def apply(self, changes: Mapping[str, Sequence[SinkRow] | None]) -> int: ...
    def upsert(self, rows: Iterable[SinkRow]) -> int: ...
    def digests(self) -> dict[str, RowDigest]: ...
    def flush(self) -> None: ...
    def row_id(self, source: str, chunk: int) -> str: ...
    def delete_ids(self, ids: Iterable[str]) -> int: ...
    def close(self) -> None: ...


def row_id(daemon: str, source: str, chunk: int) -> str:
    """The primary key of a daemon's row for chunk position ``chunk`` of ``source``."""
    return hashlib.sha256(f"{daemon}\x00{source}\x00{chunk}".encode()).hexdigest()[:32]


def fingerprint_digest(fingerprint: Mapping[str, object]) -> str:
    """A stable sha256 of a store fingerprint object (``Fingerprint.to_json()``)."""
    return hashlib.sha256(orjson.dumps(dict(fingerprint), option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_daemon_name(name: str) -> None:
    """Raise ConfigError unless ``name`` can tag a daemon's rows in a shared collection."""
    if not name.strip():
        raise ConfigError("daemon.name", name, "must not be empty: it tells this daemon's rows apart")
    if len(name.encode("utf-8", "surrogatepass")) > DAEMON_MAX_BYTES:
        raise ConfigError("daemon.name", name, f"must be at most {DAEMON_MAX_BYTES} bytes")


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix``; None when unbounded."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop())
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates never occur in text
                code = 0xE000
            return "".join(chars) + chr(code)
    return None


def fit_utf8(text: str, max_bytes: int) -> tuple[str, int]:
    """``text`` cut to ``max_bytes`` of UTF-8 at a character boundary, and its full size."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text, len(raw)
    return raw[:max_bytes].decode("utf-8", "ignore"), len(raw)
