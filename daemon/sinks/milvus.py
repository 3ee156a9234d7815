"""The Milvus sink: a pymilvus client for Milvus Lite files, standalone servers and clusters.

This is the only module that imports pymilvus, and only when a sink connects: a daemon
without sinks does not pay the ~1 s import. One pymilvus client talks to Milvus Lite (a
``.db`` folder, served in-process), a standalone server or a cluster; only the URI differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import SinkError
from daemon.log import silence
from daemon.sinks.base import Fields, Sink
from daemon.sinks.rows import DAEMON_MAX_BYTES, FIELDS, SinkRow, Stale, fit_utf8, prefix_successor

__all__ = ["MilvusSink", "prefix_filter", "quote"]

log = structlog.get_logger(__name__)


SCALAR_FIELDS = ("content", "source", "page", "chunk", "timestamp", "hash", "daemon")
VARCHAR_MAX = 65535  # Milvus' largest VARCHAR, in bytes
NO_PAGE = -1  # Milvus INT64 fields hold no null everywhere; text files have no page
UPSERT_BYTES = 16 << 20  # well under gRPC's 64 MiB message limit even with long chunks
ITERATOR_BATCH = 1000  # rows a page when a scan of a server needs more than one query
QUERY_MAX = 16384  # the most rows a Milvus server answers to one query
LOAD_TIMEOUT_S = 120.0  # loading a collection takes seconds even when it is empty


# Milvus filter strings are C-like literals: these must be escaped, everything else is literal.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def quote(value: str) -> str:
    """``value`` as a double-quoted Milvus filter literal; file names may hold quotes and backslashes."""
    return '"' + value.translate(_ESCAPES) + '"'


def prefix_filter(field: str, prefix: str) -> str:
    """A filter keeping rows whose ``field`` starts with ``prefix``.

    Written as a range (``prefix <= field < successor``) rather than ``LIKE 'prefix%'``:
    Milvus Lite has no escape for ``%`` and ``_`` in LIKE patterns, and file names hold both.
    Both engines compare strings by code point (UTF-8 bytes), the order the range assumes.
    """
    upper = prefix_successor(prefix)
    lower = f"{field} >= {quote(prefix)}"
    return lower if upper is None else f"{lower} and {field} < {quote(upper)}"


class _Milvus(NamedTuple):
    client: Any  # the MilvusClient class
    data_type: Any
    errors: tuple[type[BaseException], ...]


_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Milvus Lite folder -> open sinks using its in-process server


@functools.cache
def _load_milvus() -> _Milvus:
    import grpc  # type: ignore[import-untyped]
    import pymilvus  # type: ignore[import-untyped]
    from pymilvus.exceptions import MilvusException  # type: ignore[import-untyped]

    # pymilvus logs every failed call with a traceback through its own stderr handler, and
    # Milvus Lite logs a failed start the same way; we report both as sink_error events.
    silence("pymilvus", "milvus_lite.server_manager")
    return _Milvus(pymilvus.MilvusClient, pymilvus.DataType, (MilvusException, grpc.RpcError, OSError))


def _release_lite(path: str, *, held: bool = True) -> None:
    """One sink stops using the Milvus Lite server of ``path`` (``held``: it counted as a user);
    the last one stops it.

    Stopping it frees the folder's lock, so another process (a second daemon sharing the
    file, ``embedd sink sync``, a test) can open it while this daemon has nothing to write.
    """
    with _lite_lock:
        users = _lite_users.get(path, 0) - (1 if held else 0)
        if users > 0:
            _lite_users[path] = users
            return
        _lite_users.pop(path, None)
    from milvus_lite.server_manager import server_manager_instance  # type: ignore[import-untyped]

    server_manager_instance.release_server(path)


class MilvusSink(Sink):
    """A Milvus collection holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "Milvus"
    label = "Lite file"
    upsert_rows = 500

    _client: Any = None
    _query_max = QUERY_MAX

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lite = None if self._path is None else str(self._path.absolute())
        # Milvus Lite answers a query with every match at once, and each query costs a pass
        # over the collection, so pages would make a scan quadratic; a server caps a query
        # at QUERY_MAX rows, so there a longer scan iterates.
        self._scan_in_one_query = self._lite is not None

    @classmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """pymilvus, and milvus_lite for a ``.db`` folder."""
        return ("pymilvus", "milvus_lite") if uri.endswith(".db") else ("pymilvus",)

    @classmethod
    def path_of(cls, uri: str) -> Path | None:
        """A ``.db`` folder is Milvus Lite, served in this process; anything else a server."""
        return Path(uri) if uri.endswith(".db") else None

    @property
    def connected(self) -> bool:
        """True while a client is open."""
        return self._client is not None

    @property
    def _mine(self) -> str:
        return f"daemon == {quote(self._daemon)}"

    def _filter(self, source: str | None) -> str:
        return self._mine if source is None else f"{self._mine} and source == {quote(source)}"

    # ----- connecting -----

    def _open(self) -> None:
        milvus = _load_milvus()
        if self._lite is not None:
            self._check_lite_free(self._lite)
        try:
            client = milvus.client(uri=self._lite or self._uri, token=self._secret, timeout=self._timeout)
        except milvus.errors as exc:
            if self._lite is not None:
                _release_lite(self._lite, held=False)  # a server started for nothing would hold the lock
            raise self._error("connect", exc) from exc
        if self._lite is not None:
            with _lite_lock:
                _lite_users[self._lite] = _lite_users.get(self._lite, 0) + 1
        self._client = client
        self._ensure_collection(milvus)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.close()
        if self._lite is not None:
            _release_lite(self._lite)

    def _check_lite_free(self, path: str) -> None:
        """Name the problem before Milvus Lite fails with "Open local milvus failed"."""
        with _lite_lock:
            if path in _lite_users:
                return  # this process already serves it
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise SinkError(self._name, f"{path} is not a Milvus Lite database (it must be a folder)")
        try:
            fd = os.open(folder / "LOCK", os.O_RDWR)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SinkError(self._name, f"cannot open Milvus Lite file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SinkError(
                self._name,
                f"Milvus Lite file {path} is open in another process (a running embedd?); "
                "one process at a time can open it",
            ) from None
        finally:
            os.close(fd)  # also drops the probe lock

    def _ensure_collection(self, milvus: _Milvus) -> None:
        client = self._client
        if not self._call("has_collection", client.has_collection, self._collection, timeout=self._timeout):
            self._create(milvus)
        self._validate()
        # Loading waits until the query nodes hold the collection: seconds even when empty, far
        # past one request's timeout; a frozen server still fails the calls before it quickly.
        self._call(
            "load_collection",
            client.load_collection,
            self._collection,
            timeout=max(self._timeout, LOAD_TIMEOUT_S),
        )

    def _create(self, milvus: _Milvus) -> None:
        dt = milvus.data_type
        schema = milvus.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", dt.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", dt.FLOAT_VECTOR, dim=self._dimensions)
        schema.add_field("content", dt.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("source", dt.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("page", dt.INT64)
        schema.add_field("chunk", dt.INT64)
        schema.add_field("timestamp", dt.INT64)
        schema.add_field("hash", dt.VARCHAR, max_length=128)
        schema.add_field("daemon", dt.VARCHAR, max_length=DAEMON_MAX_BYTES)
        try:
            # The index is made in _validate: create_collection(index_params=...) would poll
            # for it with a call Milvus Lite does not implement.
            self._client.create_collection(
                self._collection,
                schema=schema,
                # Strong: a search right after a write sees it, as it would in the JSON store.
                consistency_level="Strong",
                properties=self._properties(),
                timeout=self._timeout,
            )
        except milvus.errors as exc:
            # Another daemon may have created it meanwhile; then _validate checks theirs.
            if not self._call(
                "has_collection", self._client.has_collection, self._collection, timeout=self._timeout
            ):
                raise self._error("create_collection", exc) from exc
            return
        self._created()

    def _validate(self) -> None:
        desc = self._call(
            "describe_collection", self._client.describe_collection, self._collection, timeout=self._timeout
        )
        fields = {f["name"]: f for f in desc.get("fields", [])}
        missing = [f for f in FIELDS if f not in fields]
        self._incarnation = self._check_made_by_embedd(
            desc.get("properties") or {},
            dimensions=None if missing else int((fields["vector"].get("params") or {}).get("dim", -1)),
            lacks=f"the fields {', '.join(missing)}" if missing else None,
        )
        indexes = self._call(
            "list_indexes",
            self._client.list_indexes,
            self._collection,
            field_name="vector",
            timeout=self._timeout,
        )
        if not indexes:
            # Just created (here, or by another daemon a moment ago): index it now.
            index = self._client.prepare_index_params()
            index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
            self._call(
                "create_index",
                self._client.create_index,
                self._collection,
                index,
                sync=False,
                timeout=self._timeout,
            )
            return
        metrics = {
            str(
                self._call(
                    "describe_index",
                    self._client.describe_index,
                    self._collection,
                    name,
                    timeout=self._timeout,
                ).get("metric_type", "")
            ).upper()
            for name in indexes
        }
        if "COSINE" not in metrics:
            raise self._mismatch(f"indexes its vectors by {', '.join(sorted(metrics))}, not cosine")

    # ----- errors -----

    def _error(self, what: str, exc: BaseException) -> SinkError:
        reason = getattr(exc, "message", None)
        details = getattr(exc, "details", None)
        if not reason and callable(details):
            reason = details()  # a grpc.RpcError
        reason = reason or str(exc) or type(exc).__name__
        return SinkError(self._name, f"{what} failed: {reason}")

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return _load_milvus().errors

    # ----- changing rows -----

    def _write(self, rows: Sequence[SinkRow]) -> None:
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            record = self._record(row)
            batch.append(record)
            size += self._dimensions * 4 + len(record["content"]) + len(row.source) + 200
            if size >= UPSERT_BYTES:  # long chunks: a message under gRPC's limit
                self._call("upsert", self._client.upsert, self._collection, batch, timeout=self._timeout)
                batch, size = [], 0
        if batch:
            self._call("upsert", self._client.upsert, self._collection, batch, timeout=self._timeout)

    def _record(self, row: SinkRow) -> dict[str, Any]:
        source = row.source
        vector = self._vector(row)
        content, size = fit_utf8(row.content, VARCHAR_MAX)
        if len(content) != len(row.content):
            # The store keeps the whole text; the sink's copy is for display only.
            log.warning(
                "sink_content_truncated",
                sink=self._name,
                source=source,
                chunk=row.chunk,
                bytes=size,
                kept=VARCHAR_MAX,
            )
        return {
            "id": self.row_id(source, row.chunk),
            "vector": vector,
            "content": content,
            "source": source,
            "page": NO_PAGE if row.page is None else row.page,
            "chunk": row.chunk,
            "timestamp": row.timestamp,
            "hash": row.hash,
            "daemon": self._daemon,
        }

    def _delete(self, **what: Any) -> None:
        self._call("delete", self._client.delete, self._collection, timeout=self._timeout, **what)

    def _delete_stale(self, stale: Sequence[Stale]) -> None:
        terms = []
        for st in stale:
            if st.keep is not None:
                kept = ", ".join(map(str, st.keep))
                terms.append(f"(source == {quote(st.source)} and chunk not in [{kept}])")
            elif st.keep_below == 0:
                terms.append(f"source == {quote(st.source)}")
            else:
                terms.append(f"(source == {quote(st.source)} and chunk >= {st.keep_below})")
        self._delete(filter=f"{self._mine} and ({' or '.join(terms)})")

    def _delete_keys(self, keys: Sequence[str]) -> None:
        self._delete(ids=list(keys))

    def _wipe(self) -> None:
        self._delete(filter=self._mine)

    def _drop_collection(self) -> None:
        self._call("drop_collection", self._client.drop_collection, self._collection, timeout=self._timeout)

    def flush(self) -> None:
        """Ask Milvus Lite to seal what was written: it then filters it much faster.

        A server seals and indexes growing segments by itself; a flush there only makes the
        caller wait for it (seconds), so it is left to the server.
        """
        if self._lite is None:
            return
        self.connect()
        self._call("flush", self._client.flush, self._collection, timeout=max(self._timeout, 60.0))

    # ----- reading -----

    def _count(self, source: str | None) -> int:
        res = self._call(
            "count",
            self._client.query,
            self._collection,
            filter=self._filter(source),
            output_fields=["count(*)"],
            timeout=self._timeout,
        )
        return int(res[0]["count(*)"])

    def _scan(self, source: str | None, fields: Sequence[str]) -> list[Fields]:
        return [_fields(r) for r in self._query(self._filter(source), list(fields))]

    def _query(self, expr: str, fields: list[str]) -> list[Fields]:
        client = self._client
        # Most scans (one source, a small store) fit one query, which costs one consistency
        # wait instead of an iterator's several; a server's query holds at most QUERY_MAX rows.
        limit = {} if self._scan_in_one_query else {"limit": self._query_max}
        rows = self._call(
            "query",
            client.query,
            self._collection,
            filter=expr,
            output_fields=fields,
            timeout=self._timeout,
            **limit,
        )
        if self._scan_in_one_query or len(rows) < self._query_max:
            return list(rows)
        it = self._call(
            "query",
            client.query_iterator,
            self._collection,
            batch_size=ITERATOR_BATCH,
            filter=expr,
            output_fields=fields,
            timeout=self._timeout,
        )
        out: list[Fields] = []
        try:
            while batch := self._call("query", it.next):
                out.extend(batch)
        finally:
            with contextlib.suppress(Exception):
                it.close()
        return out

    def _search(
        self, query: npt.NDArray[np.float32], k: int, *, source_prefix: str | None, daemon: str | None
    ) -> list[Fields]:
        terms = []
        if daemon is not None:
            terms.append(f"daemon == {quote(daemon)}")
        if source_prefix is not None:
            terms.append(prefix_filter("source", source_prefix))
        res = self._call(
            "search",
            self._client.search,
            self._collection,
            data=[query],
            anns_field="vector",
            limit=k,
            filter=" and ".join(f"({t})" for t in terms),
            output_fields=list(SCALAR_FIELDS),
            search_params={"metric_type": "COSINE"},
            timeout=self._timeout,
        )
        return [
            {**_fields(h["entity"]), "id": h["id"], "score": float(h["distance"])}
            for h in (res[0] if res else [])
        ]


def _fields(row: Fields) -> Fields:
    """A Milvus row with ``page`` None where it holds NO_PAGE (INT64 fields hold no null everywhere)."""
    return {**row, "page": None if row.get("page", NO_PAGE) == NO_PAGE else row["page"]}
