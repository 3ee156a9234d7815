"""What every sink shares: the ``Sink`` protocol, the rows it receives, and the keys and checks
that make several daemons' rows in one collection safe.

The JSON store stays the daemon's source of truth; a sink holds a copy of its rows in a
vector database collection that several daemons may share. Every row carries the daemon's
name and its primary key is derived from (daemon, source, chunk position), so each daemon
reads, replaces and deletes only its own rows, and writing the same source twice changes
nothing. ``BaseSink`` holds what every engine does the same way (checking arguments,
planning an ``apply``, the refusal messages); an engine module adds only its client calls.
Nothing here imports an engine's client.
"""

from __future__ import annotations

import abc
import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from daemon.errors import ConfigError, SinkError, SinkMismatchError
from daemon.query.hit import Hit

T = TypeVar("T")

__all__ = [
    "DAEMON_MAX_BYTES",
    "FIELDS",
    "FORMAT",
    "PROP_DIMENSIONS",
    "PROP_FINGERPRINT",
    "PROP_FORMAT",
    "PROP_INSTANCE",
    "BaseSink",
    "RowDigest",
    "Sink",
    "SinkRow",
    "SinkSettings",
    "Stale",
    "StoredRow",
    "check_daemon_name",
    "fingerprint_digest",
    "fit_utf8",
    "new_instance",
    "plan_changes",
    "prefix_successor",
    "read_secret",
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


class SinkSettings(Protocol):
    """What a sink needs of its ``[[sink]]`` table (``daemon.config.SinkConfig`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def uri(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def api_key_file(self) -> Path | None: ...
    @property
    def timeout_s(self) -> float: ...


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


class Sink(Protocol):
    """A place the store is mirrored into: one collection of one engine.

    Methods raise SinkError; no single request waits longer than the sink's timeout. A sink
    reconnects by itself on the next call after an error or ``close``.
    """

    @property
    def name(self) -> str: ...
    @property
    def daemon(self) -> str: ...

    @property
    def local(self) -> bool:
        """True when the sink is a file or folder only one process can open at a time."""
        ...

    @property
    def connected(self) -> bool: ...

    @property
    def incarnation(self) -> str | None:
        """What tells this collection from one made again under the same name (None before connect)."""
        ...

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def apply(self, changes: Mapping[str, Sequence[SinkRow] | None]) -> int: ...
    def upsert(self, rows: Iterable[SinkRow]) -> int: ...
    def delete_ids(self, ids: Iterable[str]) -> int: ...
    def digests(self) -> dict[str, RowDigest]: ...
    def flush(self) -> None: ...
    def row_id(self, source: str, chunk: int) -> str: ...
    def wipe(self) -> None: ...
    def drop(self) -> None: ...
    def count(self, source: str | None = None) -> int: ...
    def sources(self) -> set[str]: ...
    def rows_for(self, source: str) -> list[StoredRow]: ...
    def search(
        self,
        vector: npt.ArrayLike,
        k: int,
        *,
        source_prefix: str | None = None,
        daemon: str | None = None,
    ) -> list[Hit]: ...


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


def read_secret(settings: SinkSettings, field: str = "") -> str:
    """The sink's API key: ``token``, or the first line of ``api_key_file``; "" when neither is set.

    Raises ConfigError (naming ``field``, or the sink) when the file cannot be read or is
    empty. The key itself never appears in a message.
    """
    if settings.api_key_file is None:
        return settings.token
    field = field or f"sink {settings.name}.api_key_file"
    path = settings.api_key_file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(field, str(path), f"cannot read the key file: {reason}") from exc
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ConfigError(field, str(path), "the key file is empty")
    return key


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


class BaseSink(abc.ABC):
    """What every engine's sink does alike; an engine implements the abstract methods.

    Not thread-safe: one thread uses a sink at a time. Every call connects first if needed.
    """

    engine = "sink"  # the engine's name in messages ("Milvus", "Qdrant", ...)

    def __init__(
        self,
        settings: SinkSettings,
        *,
        daemon: str,
        dimensions: int,
        fingerprint: str,
        timeout_s: float | None = None,
    ) -> None:
        check_daemon_name(daemon)
        if dimensions <= 0:
            raise ValueError(f"dimensions must be positive, not {dimensions}")
        self._name = settings.name
        self._uri = settings.uri
        self._collection = settings.collection
        self._secret = read_secret(settings)
        self._daemon = daemon
        self._dimensions = dimensions
        self._fingerprint = fingerprint
        self._timeout = settings.timeout_s if timeout_s is None else timeout_s
        self._incarnation: str | None = None

    @property
    def name(self) -> str:
        """The sink's name in the configuration."""
        return self._name

    @property
    def daemon(self) -> str:
        """The daemon name this sink's rows carry."""
        return self._daemon

    @property
    def dimensions(self) -> int:
        """The length of every vector in the collection."""
        return self._dimensions

    @property
    def local(self) -> bool:
        """True when only one process at a time can open the sink (see each engine)."""
        return False

    @property
    def incarnation(self) -> str | None:
        """The collection's ``PROP_INSTANCE`` (or the engine's id for it), once connected."""
        return self._incarnation

    def row_id(self, source: str, chunk: int) -> str:
        """The primary key this daemon's row for chunk position ``chunk`` of ``source`` has."""
        return row_id(self._daemon, source, chunk)

    # ----- changing rows -----

    def apply(self, changes: Mapping[str, Sequence[SinkRow] | None]) -> int:
        """Make each source's rows in ``changes`` this daemon's rows of it; None deletes the source.

        All rows are upserted first, in large batches, then one delete removes what is stale
        (chunk positions the new rows do not hold, and deleted sources), so a search never
        finds a changed source missing mid-way. Both steps are idempotent: retrying after a
        failure half-way converges to the same rows. Returns the number of rows upserted.
        """
        rows, stale = plan_changes(changes)
        upserted = self.upsert(rows)
        if stale:
            self._delete_stale(stale)
        return upserted

    def replace_source(self, source: str, rows: Sequence[SinkRow]) -> None:
        """Make ``rows`` this daemon's rows of ``source`` (see ``apply``)."""
        self.apply({source: rows})

    def delete_source(self, source: str) -> None:
        """Delete this daemon's rows of ``source``; nothing happens when there are none."""
        self.apply({source: None})

    # ----- what engines share -----

    def _where(self) -> str:
        return f"collection {self._collection} at {self._uri}"

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call; the client's errors become SinkError and drop the client, so
        the next call starts afresh."""
        try:
            return fn(*args, **kwargs)
        except self._client_errors() as exc:
            self._drop()
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: BaseException) -> SinkError:
        """The SinkError for a failed client call (an engine may say more)."""
        reason = str(exc) or type(exc).__name__
        return SinkError(self._name, f"{what} failed: {reason}")

    def _check_made_by_embedd(
        self,
        properties: Mapping[str, object] | None,
        *,
        dimensions: int | None,
        lacks: str | None = None,
    ) -> str:
        """Refuse a collection not made by embedd or made for other vectors; returns its incarnation.

        ``properties`` holds the collection's ``PROP_*`` values (None: it has no metadata),
        ``dimensions`` its vector length when the engine records one, ``lacks`` what an
        engine found missing of the layout. Raises SinkMismatchError naming both sides.
        """
        where = self._where()
        fix = "set another collection in its [[sink]] table, or drop this one"
        props = dict(properties or {})
        if lacks is None and PROP_FINGERPRINT not in props:
            lacks = f"the property {PROP_FINGERPRINT}"
        if lacks is not None:
            raise SinkMismatchError(self._name, f"{where} was not made by embedd (it lacks {lacks}); {fix}")
        if dimensions is None and PROP_DIMENSIONS in props:
            dimensions = int(str(props[PROP_DIMENSIONS]))
        if dimensions is not None and dimensions != self._dimensions:
            raise SinkMismatchError(
                self._name,
                f"{where} holds {dimensions}-dimension vectors, this store {self._dimensions}; {fix}",
            )
        if props[PROP_FINGERPRINT] != self._fingerprint:
            raise SinkMismatchError(
                self._name,
                f"{where} was made with another model or chunking (fingerprint "
                f"{str(props[PROP_FINGERPRINT])[:12]}, this store {self._fingerprint[:12]}); {fix}",
            )
        # Collections made before PROP_INSTANCE existed all share one value.
        return str(props.get(PROP_INSTANCE) or "-")

    def _properties(self) -> dict[str, str]:
        """The ``PROP_*`` values of a collection this sink makes."""
        return {
            PROP_FORMAT: FORMAT,
            PROP_DIMENSIONS: str(self._dimensions),
            PROP_FINGERPRINT: self._fingerprint,
            PROP_INSTANCE: new_instance(),
        }

    def _vector(self, row: SinkRow) -> npt.NDArray[np.float32]:
        vector = np.ascontiguousarray(row.vector, dtype=np.float32)
        if vector.shape != (self._dimensions,):
            raise ValueError(
                f"{row.source} chunk {row.chunk}: vector shape {vector.shape}, not ({self._dimensions},)"
            )
        return vector

    def _query(self, vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
        if query.shape != (self._dimensions,):
            raise ValueError(f"query vector shape {query.shape}, not ({self._dimensions},)")
        return query

    # ----- what each engine implements -----

    @classmethod
    @abc.abstractmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """The modules the engine's client needs for ``uri`` (looked up, not imported)."""

    @classmethod
    def check_collection(cls, name: str) -> str | None:
        """Why ``name`` cannot name a collection of this engine; None when it can."""
        return None

    @abc.abstractmethod
    def _client_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions the engine's client raises for a failed call."""

    @abc.abstractmethod
    def _drop(self) -> None:
        """Forget the client (closing what it holds), so that the next call connects afresh."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while a client is open."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the client and make sure the collection exists and fits this store (SinkMismatchError)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the client; a later call reconnects."""

    @abc.abstractmethod
    def upsert(self, rows: Iterable[SinkRow]) -> int:
        """Write ``rows`` (of any sources) as this daemon's, in batches; returns how many."""

    @abc.abstractmethod
    def _delete_stale(self, stale: Sequence[Stale]) -> None:
        """Delete this daemon's rows ``stale`` describes, with the engine's own filter."""

    @abc.abstractmethod
    def delete_ids(self, ids: Iterable[str]) -> int:
        """Delete rows by primary key; returns how many keys were sent."""

    @abc.abstractmethod
    def digests(self) -> dict[str, RowDigest]:
        """Each of this daemon's rows by primary key: hash, page and timestamp (no vectors)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Seal or compact what was written, where the engine needs it (after a full sync)."""

    @abc.abstractmethod
    def wipe(self) -> None:
        """Delete every row of this daemon; other daemons' rows stay."""

    @abc.abstractmethod
    def drop(self) -> None:
        """Delete the whole collection, every daemon's rows; the next call makes it again."""

    @abc.abstractmethod
    def count(self, source: str | None = None) -> int:
        """How many rows this daemon has (of ``source``, if given)."""

    @abc.abstractmethod
    def sources(self) -> set[str]:
        """The sources this daemon has rows for."""

    @abc.abstractmethod
    def rows_for(self, source: str) -> list[StoredRow]:
        """This daemon's rows of ``source`` in chunk order, every field."""

    @abc.abstractmethod
    def search(
        self,
        vector: npt.ArrayLike,
        k: int,
        *,
        source_prefix: str | None = None,
        daemon: str | None = None,
    ) -> list[Hit]:
        """The ``k`` rows most cosine-similar to ``vector``, best first; every daemon's unless
        ``daemon`` is given; ``source_prefix`` keeps the sources starting with it."""
