"""The Qdrant sink: qdrant-client against a Qdrant server, or its local mode on a folder.

This is the only module that imports qdrant_client, and only when a sink connects. A server
URL (``http://qdrant:6333``) is the real use. A path opens the client's local mode, which
keeps every point in SQLite inside this process and commits them one by one: fine for tests
and a few thousand chunks, far too slow for a big store (see docs/benchmarks.md); like a
Milvus Lite file, one process at a time can open it.

Point ids are UUIDs: embedd's 32-hex-digit row ids are exactly 128 bits, so each maps to one
UUID and back. The embedd properties live in the collection's metadata.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from daemon.errors import SinkError
from daemon.sinks.base import Fields, Sink
from daemon.sinks.rows import SinkRow, Stale

__all__ = ["QdrantSink", "point_id"]

SCROLL_ROWS = 1000


def point_id(row_key: str) -> str:
    """The Qdrant point id (a UUID) of an embedd row id."""
    return str(uuid.UUID(hex=row_key))


class _Qdrant(NamedTuple):
    client: Any  # the QdrantClient class
    models: Any  # qdrant_client.models
    errors: tuple[type[BaseException], ...]


_local_lock = threading.Lock()
_local_clients: dict[str, tuple[Any, int]] = {}  # local folder -> (its one client here, sinks using it)


@functools.cache
def _load_qdrant() -> _Qdrant:
    import httpx
    from qdrant_client import QdrantClient, models
    from qdrant_client.http.exceptions import ApiException

    # Local mode raises plain ValueError (a missing collection, a wrong dimension) and
    # RuntimeError (the folder is open elsewhere); a server raises ApiException or httpx's.
    return _Qdrant(QdrantClient, models, (ApiException, httpx.HTTPError, ValueError, RuntimeError, OSError))


class QdrantSink(Sink):
    """A Qdrant collection holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "Qdrant"
    upsert_rows = 256

    _client: Any = None

    @classmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """qdrant_client (its local mode needs nothing more)."""
        return ("qdrant_client",)

    @property
    def connected(self) -> bool:
        """True while a client is open."""
        return self._client is not None

    # ----- connecting -----

    def _open(self) -> None:
        q = _load_qdrant()
        if self._path is not None:
            self._client = self._open_local(q, self._path)
        else:
            try:
                # check_compatibility=False: the client would ask the server's version in a
                # thread of its own and warn there (on stderr) when it cannot; an unreachable
                # server shows as the first call's SinkError instead.
                self._client = q.client(
                    url=self._uri,
                    api_key=self._secret or None,
                    timeout=max(1, round(self._timeout)),
                    check_compatibility=False,
                )
            except q.errors as exc:
                raise self._error("connect", exc) from exc
        self._ensure_collection(q)

    def _open_local(self, q: _Qdrant, path: Path) -> Any:
        """The one client of this process for a local folder (it locks the folder), shared by its sinks."""
        key = str(path.absolute())
        with _local_lock:
            if key in _local_clients:
                client, users = _local_clients[key]
                _local_clients[key] = (client, users + 1)
                return client
            try:
                client = q.client(path=key)
            except RuntimeError as exc:
                raise SinkError(
                    self._name,
                    f"Qdrant folder {path} is open in another process (a running embedd?); "
                    "one process at a time can open it",
                ) from exc
            except q.errors as exc:
                raise self._error("connect", exc) from exc
            _local_clients[key] = (client, 1)
            return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._path is not None:
            key = str(self._path.absolute())
            with _local_lock:
                _, users = _local_clients.get(key, (client, 1))
                if users > 1:
                    _local_clients[key] = (client, users - 1)
                    return
                _local_clients.pop(key, None)
        with contextlib.suppress(Exception):
            client.close()

    def _ensure_collection(self, q: _Qdrant) -> None:
        client = self._client
        if not self._call("collection_exists", client.collection_exists, self._collection):
            self._create(q)
        info = self._call("get_collection", client.get_collection, self._collection)
        params = info.config.params.vectors
        if not isinstance(params, q.models.VectorParams):
            self._check_made_by_embedd(None, dimensions=None, lacks="a single unnamed vector")
        self._incarnation = self._check_made_by_embedd(info.config.metadata, dimensions=int(params.size))
        if params.distance != q.models.Distance.COSINE:
            raise self._mismatch(f"compares its vectors by {params.distance}, not cosine")

    def _create(self, q: _Qdrant) -> None:
        m = q.models
        try:
            self._client.create_collection(
                self._collection,
                vectors_config=m.VectorParams(size=self._dimensions, distance=m.Distance.COSINE),
                metadata=self._properties(),
            )
        except q.errors as exc:
            # Another daemon may have made it meanwhile; then the caller checks theirs.
            if not self._call("collection_exists", self._client.collection_exists, self._collection):
                raise self._error("create_collection", exc) from exc
            return
        if self._path is None:
            # Filters on these run on every delete and search; local mode ignores payload indexes.
            for field, schema in (
                ("daemon", m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD)),
                ("source", m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, prefix=True)),
                ("chunk", m.PayloadSchemaType.INTEGER),
            ):
                self._call(
                    "create_payload_index",
                    self._client.create_payload_index,
                    self._collection,
                    field_name=field,
                    field_schema=schema,
                )
        self._created()

    # ----- errors -----

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return _load_qdrant().errors

    # ----- filters -----

    def _match(self, key: str, value: object) -> Any:
        m = _load_qdrant().models
        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    def _mine(self, *more: Any) -> Any:
        return _load_qdrant().models.Filter(must=[self._match("daemon", self._daemon), *more])

    # ----- changing rows -----

    def _write(self, rows: Sequence[SinkRow]) -> None:
        m = _load_qdrant().models
        points = [
            m.PointStruct(
                id=point_id(self.row_id(row.source, row.chunk)),
                vector=self._vector(row).tolist(),
                payload=self._payload(row),
            )
            for row in rows
        ]
        self._call("upsert", self._client.upsert, self._collection, points, wait=True)

    def _payload(self, row: SinkRow) -> dict[str, Any]:
        return {
            "id": self.row_id(row.source, row.chunk),
            "content": row.content,
            "source": row.source,
            "page": row.page,  # JSON null when there is none
            "chunk": row.chunk,
            "timestamp": row.timestamp,
            "hash": row.hash,
            "daemon": self._daemon,
        }

    def _delete_stale(self, stale: Sequence[Stale]) -> None:
        m = _load_qdrant().models
        terms = []
        for st in stale:
            src = self._match("source", st.source)
            if st.keep is not None:
                terms.append(
                    m.Filter(
                        must=[src],
                        must_not=[m.FieldCondition(key="chunk", match=m.MatchAny(any=list(st.keep)))],
                    )
                )
            elif st.keep_below == 0:
                terms.append(m.Filter(must=[src]))
            else:
                terms.append(
                    m.Filter(must=[src, m.FieldCondition(key="chunk", range=m.Range(gte=st.keep_below))])
                )
        self._delete(m.FilterSelector(filter=self._mine(m.Filter(should=terms))))

    def _delete(self, selector: Any) -> None:
        self._call("delete", self._client.delete, self._collection, points_selector=selector, wait=True)

    def _delete_keys(self, keys: Sequence[str]) -> None:
        self._delete(_load_qdrant().models.PointIdsList(points=[point_id(k) for k in keys]))

    def _wipe(self) -> None:
        self._delete(_load_qdrant().models.FilterSelector(filter=self._mine()))

    def _drop_collection(self) -> None:
        self._call("delete_collection", self._client.delete_collection, self._collection)

    # ----- reading -----

    def _filter(self, source: str | None) -> Any:
        return self._mine() if source is None else self._mine(self._match("source", source))

    def _scan(self, source: str | None, fields: Sequence[str]) -> list[Fields]:
        payload = [f for f in fields if f not in ("id", "vector")]
        out: list[Fields] = []
        offset = None
        while True:
            points, offset = self._call(
                "scroll",
                self._client.scroll,
                self._collection,
                scroll_filter=self._filter(source),
                limit=SCROLL_ROWS,
                offset=offset,
                with_payload=payload,
                with_vectors="vector" in fields,
            )
            out.extend(_fields(p) for p in points)
            if offset is None:
                return out

    def _count(self, source: str | None) -> int:
        flt = self._filter(source)
        return int(
            self._call("count", self._client.count, self._collection, count_filter=flt, exact=True).count
        )

    def _search(
        self, query: npt.NDArray[np.float32], k: int, *, source_prefix: str | None, daemon: str | None
    ) -> list[Fields]:
        m = _load_qdrant().models
        must = []
        if daemon is not None:
            must.append(self._match("daemon", daemon))
        if source_prefix is not None:
            must.append(m.FieldCondition(key="source", match=m.MatchPrefix(prefix=source_prefix)))
        res = self._call(
            "search",
            self._client.query_points,
            self._collection,
            query=query.tolist(),
            limit=k,
            query_filter=m.Filter(must=must) if must else None,
            with_payload=True,
        )
        return [{**_fields(p), "score": float(p.score)} for p in res.points]


def _fields(point: Any) -> Fields:
    """A point's payload, its id as the row id, and its vector when it was read."""
    return {**(point.payload or {}), "id": uuid.UUID(str(point.id)).hex, "vector": point.vector}
