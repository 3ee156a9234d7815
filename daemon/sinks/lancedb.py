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
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from daemon.errors import SinkError
from daemon.sinks.base import Fields, Sink
from daemon.sinks.rows import FIELDS, SinkRow, Stale

__all__ = ["LanceDBSink", "sql_string"]

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


class LanceDBSink(Sink):
    """A LanceDB table holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "LanceDB"
    exclusive = False  # several processes may write one folder (see the module's docstring)
    upsert_rows = 5000  # rows per merge_insert: each one is a new version of the table

    _db: Any = None
    _table: Any = None
    _writes = 0  # since the last compaction

    @classmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """lancedb and pyarrow."""
        return ("lancedb", "pyarrow")

    @property
    def connected(self) -> bool:
        """True while the table is open."""
        return self._table is not None

    @property
    def _mine(self) -> str:
        return f"daemon = {sql_string(self._daemon)}"

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

    def _open(self) -> None:
        lance = _load_lance()
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
            raise self._error("connect", exc) from exc
        self._validate(lance, table)
        self._table = table

    def _create(self, lance: _Lance) -> Any:
        try:
            table = self._db.create_table(self._collection, schema=self._schema(lance))
        except ValueError:
            # Another daemon may have made it meanwhile; then the caller checks theirs.
            return self._db.open_table(self._collection)
        self._created()
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

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= OPTIMIZE_EVERY:
            self.flush()

    # ----- changing rows -----

    def _write(self, rows: Sequence[SinkRow]) -> None:
        table, pa = self._table, _load_lance().pa
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

    def _delete(self, where: str) -> None:
        self._call("delete", self._table.delete, where)
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

    def _delete_keys(self, keys: Sequence[str]) -> None:
        self._delete(f"id IN ({', '.join(map(sql_string, keys))})")

    def flush(self) -> None:
        """Compact the table's files and drop old versions (``KEEP_VERSIONS``)."""
        self.connect()
        self._writes = 0
        self._call("optimize", self._table.optimize, cleanup_older_than=KEEP_VERSIONS)

    def _wipe(self) -> None:
        self._delete(self._mine)

    def _drop_collection(self) -> None:
        self._call("drop_table", self._db.drop_table, self._collection)

    # ----- reading -----

    def _filter(self, source: str | None) -> str:
        return self._mine if source is None else f"{self._mine} AND source = {sql_string(source)}"

    def _scan(self, source: str | None, fields: Sequence[str]) -> list[Fields]:
        table, where = self._table, self._filter(source)
        rows = self._call(
            "query",
            lambda: table.search().where(where).select(list(fields)).limit(None).to_arrow().to_pylist(),
        )
        return list(rows)

    def _count(self, source: str | None) -> int:
        return int(self._call("count", self._table.count_rows, self._filter(source)))

    def _search(
        self, query: npt.NDArray[np.float32], k: int, *, source_prefix: str | None, daemon: str | None
    ) -> list[Fields]:
        table = self._table
        terms = []
        if daemon is not None:
            terms.append(f"daemon = {sql_string(daemon)}")
        if source_prefix is not None:
            terms.append(f"starts_with(source, {sql_string(source_prefix)})")

        def search() -> Any:
            found = table.search(query, vector_column_name="vector").distance_type("cosine")
            if terms:
                found = found.where(" AND ".join(terms), prefilter=True)
            return found.select([*SCALARS, "_distance"]).limit(k).to_list()

        # Lance answers the cosine distance.
        return [{**h, "score": 1.0 - float(h["_distance"])} for h in self._call("search", search)]
