"""The LanceDB sink: a Lance table in a folder (or any URI ``lancedb.connect`` takes).

This is the only module that imports lancedb and pyarrow, and only when a sink connects
(importing lancedb takes seconds). LanceDB is embedded: the daemon's process reads and writes
the folder itself, with no server. Several processes may write one folder at a time (Lance
commits optimistically and retries), and every read sees the latest commit, so daemons on
one machine, or on machines sharing a folder, can share a table. The embedd properties live
in the table schema's metadata. Searches are exact (no vector index): at 100,000 rows a
scan takes a fraction of a second.

Every write adds a version (files and a manifest); ``optimize`` compacts them and drops
versions older than ``KEEP_VERSIONS``, from ``flush`` and every ``OPTIMIZE_EVERY`` writes.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import SinkError
from daemon.query.hit import Hit
from daemon.sinks.base import FIELDS, BaseSink, RowDigest, SinkRow, SinkSettings, Stale, StoredRow

__all__ = ["LanceDBSink", "sql_string"]

log = structlog.get_logger(__name__)


UPSERT_ROWS = 5000  # rows per merge_insert: each one is a new version of the table
DELETE_IDS = 1000
OPTIMIZE_EVERY = 200  # writes between compactions
KEEP_VERSIONS = timedelta(minutes=10)  # a reader in another process may still be on an older one
_RUST_PLACE = re.compile(r",\s*/\S+\.rs:\d+:\d+")
SCALARS = ("id", "content", "source", "page", "chunk", "timestamp", "hash", "daemon")


def sql_string(value: str) -> str:
    """``value`` as a single-quoted SQL literal for a Lance filter: quotes doubled, nothing else special."""
    return "'" + value.replace("'", "''") + "'"


class _Lance(NamedTuple):
    lancedb: Any
    pa: Any  # pyarrow
    errors: tuple[type[BaseException], ...]


@functools.cache
def _load_lance() -> _Lance:
    import lancedb
    import pyarrow as pa  # type: ignore[import-untyped]

    # Lance's Rust errors arrive as ValueError (a missing table, a bad filter), OSError
    # (the folder) or RuntimeError; pyarrow's as ArrowException.
    return _Lance(lancedb, pa, (ValueError, RuntimeError, OSError, pa.ArrowException))


class LanceDBSink(BaseSink):
    """A LanceDB table holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "LanceDB"

    def __init__(
        self,
        settings: SinkSettings,
        *,
        daemon: str,
        dimensions: int,
        fingerprint: str,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            settings, daemon=daemon, dimensions=dimensions, fingerprint=fingerprint, timeout_s=timeout_s
        )
        self._path = None if "://" in self._uri else Path(self._uri)
        self._db: Any = None
        self._table: Any = None
        self._writes = 0
        self._mine = f"daemon = {sql_string(daemon)}"

    @classmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """lancedb and pyarrow."""
        return ("lancedb", "pyarrow")

    @property
    def connected(self) -> bool:
        """True while the table is open."""
        return self._table is not None

    # ----- connecting -----

    def _schema(self, lance: _Lance) -> Any:
        pa = lance.pa
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("vector", pa.list_(pa.float32(), self._dimensions), nullable=False),
                pa.field("content", pa.string(), nullable=False),
                pa.field("source", pa.string(), nullable=False),
                pa.field("page", pa.int64(), nullable=True),  # null: no page
                pa.field("chunk", pa.int64(), nullable=False),
                pa.field("timestamp", pa.int64(), nullable=False),
                pa.field("hash", pa.string(), nullable=False),
                pa.field("daemon", pa.string(), nullable=False),
            ],
            metadata=self._properties(),
        )

    def connect(self) -> None:
        """Open the folder and make sure the table exists and fits this store.

        Raises SinkMismatchError when the table exists with another dimension or fingerprint
        or was not made by embedd, and SinkError when it cannot be opened.
        """
        if self._table is not None:
            return
        lance = _load_lance()
        if self._path is not None and not self._path.parent.is_dir():
            raise SinkError(
                self._name, f"cannot open LanceDB folder {self._path}: {self._path.parent} is missing"
            )
        try:
            # read_consistency_interval=0: every read sees what other processes committed.
            self._db = lance.lancedb.connect(
                self._uri, api_key=self._secret or None, read_consistency_interval=timedelta(0)
            )
            try:
                table = self._db.open_table(self._collection)
            except ValueError:
                table = self._create(lance)
        except lance.errors as exc:
            self._drop()
            raise self._error("connect", exc) from exc
        try:
            self._validate(lance, table)
        except BaseException:
            self._drop()
            raise
        self._table = table
        log.info("sink_connected", sink=self._name, uri=self._uri, collection=self._collection)

    def _create(self, lance: _Lance) -> Any:
        try:
            table = self._db.create_table(self._collection, schema=self._schema(lance))
        except ValueError:
            # Another daemon may have made it meanwhile; then the caller checks theirs.
            return self._db.open_table(self._collection)
        log.info(
            "sink_collection_created",
            sink=self._name,
            collection=self._collection,
            dimensions=self._dimensions,
        )
        return table

    def _validate(self, lance: _Lance, table: Any) -> None:
        schema = table.schema
        names = set(schema.names)
        missing = [f for f in FIELDS if f not in names]
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        dims = None
        if not missing:
            vtype = schema.field("vector").type
            if lance.pa.types.is_fixed_size_list(vtype):
                dims = int(vtype.list_size)
            else:
                missing = ["a fixed-size vector column"]
        self._incarnation = self._check_made_by_embedd(
            meta, dimensions=dims, lacks=f"the fields {', '.join(missing)}" if missing else None
        )

    def close(self) -> None:
        """Let go of the table; a later call opens it again."""
        self._drop()

    def _drop(self) -> None:
        self._table = None
        db, self._db = self._db, None
        if db is not None and hasattr(db, "close"):
            with contextlib.suppress(Exception):
                db.close()

    # ----- errors -----

    def _error(self, what: str, exc: BaseException) -> SinkError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = _RUST_PLACE.sub("", reason)  # ", /root/.cargo/.../commit.rs:653:26" helps no user
        return SinkError(self._name, f"{what} failed: {reason}")

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return _load_lance().errors

    def _ready(self) -> Any:
        self.connect()
        return self._table

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= OPTIMIZE_EVERY:
            self.flush()

    # ----- changing rows -----

    def upsert(self, rows: Iterable[SinkRow]) -> int:
        """Write ``rows`` (of any sources) as this daemon's, in batches; returns how many."""
        table = self._ready()
        total = 0
        batch: list[SinkRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= UPSERT_ROWS:
                total += self._merge(table, batch)
                batch = []
        if batch:
            total += self._merge(table, batch)
        return total

    def _merge(self, table: Any, rows: list[SinkRow]) -> int:
        pa = _load_lance().pa
        flat = np.concatenate([self._vector(r) for r in rows])
        data = pa.table(
            {
                "id": pa.array([self.row_id(r.source, r.chunk) for r in rows], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self._dimensions),
                "content": pa.array([r.content for r in rows], pa.string()),
                "source": pa.array([r.source for r in rows], pa.string()),
                "page": pa.array([r.page for r in rows], pa.int64()),
                "chunk": pa.array([r.chunk for r in rows], pa.int64()),
                "timestamp": pa.array([r.timestamp for r in rows], pa.int64()),
                "hash": pa.array([r.hash for r in rows], pa.string()),
                "daemon": pa.array([self._daemon] * len(rows), pa.string()),
            },
            schema=self._schema(_load_lance()).remove_metadata(),
        )

        def merge() -> Any:
            return (
                table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
            )

        self._call("upsert", merge)
        self._wrote()
        return len(rows)

    def _delete(self, where: str) -> None:
        table = self._ready()
        self._call("delete", table.delete, where)
        self._wrote()

    def _delete_stale(self, stale: Sequence[Stale]) -> None:
        terms = []
        for st in stale:
            src = f"source = {sql_string(st.source)}"
            if st.keep is not None:
                terms.append(f"({src} AND chunk NOT IN ({', '.join(map(str, st.keep))}))")
            elif st.keep_below == 0:
                terms.append(src)
            else:
                terms.append(f"({src} AND chunk >= {st.keep_below})")
        self._delete(f"{self._mine} AND ({' OR '.join(terms)})")

    def delete_ids(self, ids: Iterable[str]) -> int:
        """Delete rows by primary key, in batches; returns how many keys were sent."""
        keys = list(ids)
        for i in range(0, len(keys), DELETE_IDS):
            self._delete(f"id IN ({', '.join(map(sql_string, keys[i : i + DELETE_IDS]))})")
        return len(keys)

    def flush(self) -> None:
        """Compact the table's files and drop old versions (``KEEP_VERSIONS``)."""
        table = self._ready()
        self._writes = 0
        self._call("optimize", table.optimize, cleanup_older_than=KEEP_VERSIONS)

    def wipe(self) -> None:
        """Delete every row of this daemon; other daemons' rows stay."""
        self._delete(self._mine)

    def drop(self) -> None:
        """Delete the whole table, every daemon's rows; the next call makes it again."""
        self._ready()
        self._call("drop_table", self._db.drop_table, self._collection)
        self._drop()

    # ----- reading -----

    def _scan(self, where: str, columns: list[str]) -> list[dict[str, Any]]:
        table = self._ready()
        rows = self._call(
            "query", lambda: table.search().where(where).select(columns).limit(None).to_arrow().to_pylist()
        )
        return list(rows)

    def digests(self) -> dict[str, RowDigest]:
        """Each of this daemon's rows by primary key: hash, page and timestamp; vectors are not read."""
        return {
            r["id"]: RowDigest(r["hash"], r["page"], int(r["timestamp"]))
            for r in self._scan(self._mine, ["id", "hash", "page", "timestamp"])
        }

    def sources(self) -> set[str]:
        """The sources this daemon has rows for."""
        return {r["source"] for r in self._scan(self._mine, ["source"])}

    def count(self, source: str | None = None) -> int:
        """How many rows this daemon has (of ``source``, if given)."""
        table = self._ready()
        where = self._mine if source is None else f"{self._mine} AND source = {sql_string(source)}"
        return int(self._call("count", table.count_rows, where))

    def rows_for(self, source: str) -> list[StoredRow]:
        """This daemon's rows of ``source`` in chunk order, every field."""
        rows = self._scan(f"{self._mine} AND source = {sql_string(source)}", list(FIELDS))
        out = [
            StoredRow(
                id=r["id"],
                vector=np.asarray(r["vector"], dtype=np.float32),
                content=r["content"],
                source=r["source"],
                page=r["page"],
                chunk=int(r["chunk"]),
                timestamp=int(r["timestamp"]),
                hash=r["hash"],
                daemon=r["daemon"],
            )
            for r in rows
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
        """The ``k`` rows most cosine-similar to ``vector``, best first (every daemon's unless
        ``daemon`` is given); ``source_prefix`` keeps sources that start with it."""
        if k <= 0:
            return []
        table = self._ready()
        terms = []
        if daemon is not None:
            terms.append(f"daemon = {sql_string(daemon)}")
        if source_prefix:
            terms.append(f"starts_with(source, {sql_string(source_prefix)})")
        vec = self._query(vector)

        def search() -> Any:
            query = table.search(vec, vector_column_name="vector").distance_type("cosine")
            if terms:
                query = query.where(" AND ".join(terms), prefilter=True)
            return query.select([*SCALARS, "_distance"]).limit(k).to_list()

        found = self._call("search", search)
        return [
            Hit(
                rank=rank,
                score=1.0 - float(h["_distance"]),  # Lance answers the cosine distance
                id=h["id"],
                source=h["source"],
                page=h["page"],
                chunk=int(h["chunk"]),
                content=h["content"],
                daemon=h["daemon"],
                hash=h["hash"],
                timestamp=int(h["timestamp"]),
            )
            for rank, h in enumerate(found, start=1)
        ]
