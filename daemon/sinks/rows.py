"""The rows a sink receives and holds, their keys, and the layout of an embedd collection.

Plain data and pure functions, shared by the ``Sink`` interface (``base.py``), the engines,
the syncer and the tests; nothing here talks to an engine.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from daemon.errors import ConfigError

__all__ = [
    "DAEMON_MAX_BYTES",
    "FIELDS",
    "FORMAT",
    "PROP_DIMENSIONS",
    "PROP_FINGERPRINT",
    "PROP_FORMAT",
    "PROP_INSTANCE",
    "RowDigest",
    "SinkRow",
    "Stale",
    "StoredRow",
    "check_daemon_name",
    "fingerprint_digest",
    "fit_utf8",
    "new_instance",
    "plan_changes",
    "prefix_successor",
    "row_id",
    "slash_prefixes",
]

DAEMON_MAX_BYTES = 256
FORMAT = "1"  # the layout of an embedd collection: the fields below and these properties
PROP_FORMAT = "embedd.format"
PROP_DIMENSIONS = "embedd.dimensions"
PROP_FINGERPRINT = "embedd.fingerprint"
PROP_INSTANCE = "embedd.instance"  # a fresh uuid per collection made: tells a re-made one apart
FIELDS = ("id", "vector", "content", "source", "page", "chunk", "timestamp", "hash", "daemon")


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


@dataclass(frozen=True)
class StoredRow:
    """One row as a sink holds it, every field (``rows_for``)."""

    id: str
    vector: npt.NDArray[np.float32]
    content: str
    source: str
    page: int | None
    chunk: int
    timestamp: int
    hash: str
    daemon: str


class RowDigest(NamedTuple):
    """What tells a sink row is the store's row with the same key, without reading its vector."""

    hash: str
    page: int | None
    timestamp: int


@dataclass(frozen=True)
class Stale:
    """Which of this daemon's rows of ``source`` go once its new rows are written.

    ``keep`` None: those at chunk positions ``>= keep_below`` (0: every row of the source);
    otherwise every row whose position is not in ``keep``.
    """

    source: str
    keep_below: int = 0
    keep: tuple[int, ...] | None = None


def row_id(daemon: str, source: str, chunk: int) -> str:
    """The primary key of a daemon's row for chunk position ``chunk`` of ``source`` (32 hex digits)."""
    return hashlib.sha256(f"{daemon}\x00{source}\x00{chunk}".encode()).hexdigest()[:32]


def fingerprint_digest(fingerprint: Mapping[str, object]) -> str:
    """A stable sha256 of a store fingerprint object (``Fingerprint.to_json()``)."""
    return hashlib.sha256(orjson.dumps(dict(fingerprint), option=orjson.OPT_SORT_KEYS)).hexdigest()


def new_instance() -> str:
    """A value for ``PROP_INSTANCE`` of a collection being made."""
    return uuid.uuid4().hex


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


def slash_prefixes(source: str) -> list[str]:
    """Every folder prefix of ``source`` ending in '/', then ``source`` itself.

    For engines without a string-prefix filter: a row lists these, and a prefix query asks
    for rows whose list holds the longest folder prefix of what was asked.
    """
    parts = source.split("/")
    return ["/".join(parts[:i]) + "/" for i in range(1, len(parts))] + [source]


def fit_utf8(text: str, max_bytes: int) -> tuple[str, int]:
    """``text`` cut to ``max_bytes`` of UTF-8 at a character boundary, and its full size."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text, len(raw)
    return raw[:max_bytes].decode("utf-8", "ignore"), len(raw)


def plan_changes(changes: Mapping[str, Sequence[SinkRow] | None]) -> tuple[list[SinkRow], list[Stale]]:
    """The rows to upsert and the stale rows to delete afterwards for ``apply(changes)``.

    Raises ValueError when a source's rows repeat a chunk position or belong to another source.
    """
    rows: list[SinkRow] = []
    stale: list[Stale] = []
    for source, new in changes.items():
        if new is None:
            stale.append(Stale(source))
            continue
        chunks = sorted(r.chunk for r in new)
        if len(set(chunks)) != len(chunks):
            raise ValueError(f"{source}: two rows have the same chunk position")
        if any(r.source != source for r in new):
            raise ValueError(f"{source}: a row of another source was passed with it")
        rows.extend(new)
        if chunks == list(range(len(chunks))):  # what the pipeline writes (also: no rows at all)
            stale.append(Stale(source, keep_below=len(chunks)))
        else:
            stale.append(Stale(source, keep=tuple(chunks)))
    return rows, stale
