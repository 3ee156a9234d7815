"""What every sink shares: the ``Sink`` interface, the rows it receives, and the keys and checks
that make several daemons' rows in one collection safe.

The JSON store stays the daemon's source of truth; a sink holds a copy of its rows in a
vector database collection that several daemons may share. Every row carries the daemon's
name and its primary key is derived from (daemon, source, chunk position), so each daemon
reads, replaces and deletes only its own rows, and writing the same source twice changes
nothing. ``Sink`` is the one declaration of a sink: everything the syncer and the commands
call is written here once (connecting, checking arguments, batching, planning an ``apply``,
turning rows into hits, the refusal messages) over a few storage primitives; an engine
module implements only those, with its client's calls. Nothing here imports an engine's client.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import ConfigError, SinkError, SinkMismatchError
from daemon.query.hit import Hit

# The rows and keys live in rows.py; those a sink's users handle are named here too, so
# that the syncer, the commands and the tests import the interface and its rows from one place.
from daemon.sinks.rows import (
    FIELDS,
    FORMAT,
    PROP_DIMENSIONS,
    PROP_FINGERPRINT,
    PROP_FORMAT,
    PROP_INSTANCE,
    RowDigest,
    SinkRow,
    Stale,
    StoredRow,
    check_daemon_name,
    fingerprint_digest,
    new_instance,
    plan_changes,
    row_id,
)

T = TypeVar("T")
Fields = Mapping[str, Any]  # one row as an engine reads it: field name -> value

log = structlog.get_logger(__name__)

__all__ = [
    "Fields",
    "RowDigest",
    "Sink",
    "SinkRow",
    "SinkSettings",
    "Stale",
    "StoredRow",
    "batches",
    "fingerprint_digest",
    "read_secret",
    "row_id",
]


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


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter, none when there are no items)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Sink(abc.ABC):
    """A place the store is mirrored into: one collection of one engine.

    The interface is written once, here, over a few storage primitives each engine module
    implements (the abstract ``_`` methods: open and forget a client, write a batch, delete
    by key or by filter, scan, count and search), as litestream's replicas implement a
    ``ReplicaClient``. Methods raise SinkError; no single request waits longer than the
    sink's timeout. Every call connects first if needed, and a sink reconnects by itself on
    the next call after an error or ``close``. Not thread-safe: one thread uses a sink at a time.
    """

    engine = "sink"  # the engine's name in messages ("Milvus", "Qdrant", ...)
    label = "folder"  # what a path names, in messages ("LanceDB folder", "Milvus Lite file")
    exclusive = True  # a path this engine opens can be open in one process at a time
    upsert_rows = 1000  # rows per write call
    delete_keys = 1000  # keys per delete call

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
        self._path = self.path_of(self._uri)

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
        """True when the sink is a file or folder only one process can open at a time."""
        return self.exclusive and self._path is not None

    @property
    def incarnation(self) -> str | None:
        """What tells this collection from one made again under the same name (None before connect):
        its ``PROP_INSTANCE``, or the engine's id for it."""
        return self._incarnation

    def row_id(self, source: str, chunk: int) -> str:
        """The primary key this daemon's row for chunk position ``chunk`` of ``source`` has."""
        return row_id(self._daemon, source, chunk)

    # ----- connecting -----

    def connect(self) -> None:
        """Open the client and make sure the collection exists and fits this store.

        Creates the collection on first use. Raises SinkMismatchError when the collection
        exists with another dimension or fingerprint or was not made by embedd, and SinkError
        when the sink cannot be reached.
        """
        if self.connected:
            return
        if self._path is not None and not self._path.parent.is_dir():
            what = f"{self.engine} {self.label} {self._path}"
            raise SinkError(self._name, f"cannot open {what}: {self._path.parent} is missing")
        try:
            self._open()
        except BaseException:
            self._drop()
            raise
        log.info("sink_connected", sink=self._name, uri=self._uri, collection=self._collection)

    def close(self) -> None:
        """Close the client (a local file or folder is free for other processes then); a later
        call reconnects."""
        self._drop()

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
            self.connect()
            self._delete_stale(stale)
        return upserted

    def replace_source(self, source: str, rows: Sequence[SinkRow]) -> None:
        """Make ``rows`` this daemon's rows of ``source`` (see ``apply``)."""
        self.apply({source: rows})

    def delete_source(self, source: str) -> None:
        """Delete this daemon's rows of ``source``; nothing happens when there are none."""
        self.apply({source: None})

    def upsert(self, rows: Iterable[SinkRow]) -> int:
        """Write ``rows`` (of any sources) as this daemon's, in batches; returns how many."""
        self.connect()
        total = 0
        for batch in batches(rows, self.upsert_rows):
            self._write(batch)
            total += len(batch)
        return total

    def delete_ids(self, ids: Iterable[str]) -> int:
        """Delete rows by primary key, in batches; returns how many keys were sent."""
        self.connect()
        keys = list(ids)
        for batch in batches(keys, self.delete_keys):
            self._delete_keys(batch)
        return len(keys)

    def flush(self) -> None:
        """Seal or compact what was written, where the engine needs it (after a full sync);
        by default nothing: the engine has applied every write when its call returns."""
        return

    def wipe(self) -> None:
        """Delete every row of this daemon; other daemons' rows stay."""
        self.connect()
        self._wipe()

    def drop(self) -> None:
        """Delete the whole collection, every daemon's rows; the next call makes it again."""
        self.connect()
        self._drop_collection()
        self._drop()

    # ----- reading -----

    def digests(self) -> dict[str, RowDigest]:
        """Each of this daemon's rows by primary key: what tells it is as the store has it.

        The key covers source and chunk position, the hash the text (and, with the
        fingerprint, the vector), the timestamp a re-embedding; vectors are not read.
        """
        self.connect()
        return {
            str(r["id"]): RowDigest(r["hash"], _page(r), int(r["timestamp"]))
            for r in self._scan(None, ("id", "hash", "page", "timestamp"))
        }

    def sources(self) -> set[str]:
        """The sources this daemon has rows for."""
        self.connect()
        return {r["source"] for r in self._scan(None, ("source",))}

    def count(self, source: str | None = None) -> int:
        """How many rows this daemon has (of ``source``, if given)."""
        self.connect()
        return self._count(source)

    def rows_for(self, source: str) -> list[StoredRow]:
        """This daemon's rows of ``source`` in chunk order, every field."""
        self.connect()
        out = [
            StoredRow(
                id=str(r["id"]),
                vector=np.asarray(r["vector"], dtype=np.float32),
                content=r["content"],
                source=r["source"],
                page=_page(r),
                chunk=int(r["chunk"]),
                timestamp=int(r["timestamp"]),
                hash=r["hash"],
                daemon=r["daemon"],
            )
            for r in self._scan(source, FIELDS)
        ]
        out.sort(key=lambda r: r.chunk)
        return out

    def search(
        self,
        vector: npt.ArrayLike,
        k: int,
        *,
        source_prefix: str | None = None,
        daemon: str | None = None,
    ) -> list[Hit]:
        """The ``k`` rows most cosine-similar to ``vector``, best first.

        Searches every daemon's rows unless ``daemon`` is given; ``source_prefix`` keeps the
        sources that start with it. Raises ValueError for a vector of another length.
        """
        if k <= 0:
            return []
        self.connect()
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
        if query.shape != (self._dimensions,):
            raise ValueError(f"query vector shape {query.shape}, not ({self._dimensions},)")
        found = self._search(query, k, source_prefix=source_prefix or None, daemon=daemon)
        return [
            Hit(
                rank=rank,
                score=float(h["score"]),
                id=str(h["id"]),
                source=h["source"],
                page=_page(h),
                chunk=int(h["chunk"]),
                content=h["content"],
                daemon=h["daemon"],
                hash=h["hash"],
                timestamp=int(h["timestamp"]),
            )
            for rank, h in enumerate(found, start=1)
        ]

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

    def _mismatch(self, what: str) -> SinkMismatchError:
        """The refusal of a collection that does not fit: ``what`` says how."""
        fix = "set another collection in its [[sink]] table, or drop this one"
        return SinkMismatchError(self._name, f"{self._where()} {what}; {fix}")

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
        props = dict(properties or {})
        if lacks is None and PROP_FINGERPRINT not in props:
            lacks = f"the property {PROP_FINGERPRINT}"
        if lacks is not None:
            raise self._mismatch(f"was not made by embedd (it lacks {lacks})")
        if dimensions is None and PROP_DIMENSIONS in props:
            dimensions = int(str(props[PROP_DIMENSIONS]))
        if dimensions is not None and dimensions != self._dimensions:
            raise self._mismatch(f"holds {dimensions}-dimension vectors, this store {self._dimensions}")
        if props[PROP_FINGERPRINT] != self._fingerprint:
            raise self._mismatch(
                f"was made with another model or chunking (fingerprint "
                f"{str(props[PROP_FINGERPRINT])[:12]}, this store {self._fingerprint[:12]})"
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

    def _created(self) -> None:
        """Log that this sink made its collection."""
        log.info(
            "sink_collection_created",
            sink=self._name,
            collection=self._collection,
            dimensions=self._dimensions,
        )

    def _vector(self, row: SinkRow) -> npt.NDArray[np.float32]:
        vector = np.ascontiguousarray(row.vector, dtype=np.float32)
        if vector.shape != (self._dimensions,):
            raise ValueError(
                f"{row.source} chunk {row.chunk}: vector shape {vector.shape}, not ({self._dimensions},)"
            )
        return vector

    # ----- what each engine implements -----

    @classmethod
    @abc.abstractmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """The modules the engine's client needs for ``uri`` (looked up, not imported)."""

    @classmethod
    def check_collection(cls, name: str) -> str | None:
        """Why ``name`` cannot name a collection of this engine; None when it can."""
        return None

    @classmethod
    def path_of(cls, uri: str) -> Path | None:
        """The file or folder ``uri`` names when the engine opens it in this process; None for a server."""
        return None if "://" in uri else Path(uri)

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while a client is open."""

    @abc.abstractmethod
    def _open(self) -> None:
        """Open the client and the collection (making it if needed, refusing one that does not
        fit: ``_check_made_by_embedd``) and set ``_incarnation``; ``connect`` drops what was
        opened when it raises."""

    @abc.abstractmethod
    def _drop(self) -> None:
        """Forget the client (closing what it holds), so that the next call connects afresh;
        harmless when nothing is open."""

    @abc.abstractmethod
    def _client_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions the engine's client raises for a failed call."""

    @abc.abstractmethod
    def _write(self, rows: Sequence[SinkRow]) -> None:
        """Upsert one batch (at most ``upsert_rows``) as this daemon's rows."""

    @abc.abstractmethod
    def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete one batch (at most ``delete_keys``) of rows by primary key."""

    @abc.abstractmethod
    def _delete_stale(self, stale: Sequence[Stale]) -> None:
        """Delete this daemon's rows ``stale`` describes, with the engine's own filter."""

    @abc.abstractmethod
    def _wipe(self) -> None:
        """Delete every row of this daemon."""

    @abc.abstractmethod
    def _drop_collection(self) -> None:
        """Delete the whole collection."""

    @abc.abstractmethod
    def _scan(self, source: str | None, fields: Sequence[str]) -> list[Fields]:
        """This daemon's rows (of ``source``, if given), each with at least ``fields`` of
        ``FIELDS``, in any order; ``id`` is the row id, ``page`` None when there is none."""

    @abc.abstractmethod
    def _count(self, source: str | None) -> int:
        """How many rows this daemon has (of ``source``, if given)."""

    @abc.abstractmethod
    def _search(
        self, query: npt.NDArray[np.float32], k: int, *, source_prefix: str | None, daemon: str | None
    ) -> list[Fields]:
        """The ``k`` best rows for ``query``, best first (every daemon's unless ``daemon`` is
        given; ``source_prefix`` non-empty or None), each with the scalar fields of ``FIELDS``
        and ``score``, the cosine similarity."""


def _page(row: Fields) -> int | None:
    page = row.get("page")
    return None if page is None else int(page)
