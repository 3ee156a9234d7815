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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import SinkError
from daemon.query.hit import Hit
from daemon.sinks.base import BaseSink, RowDigest, SinkRow, SinkSettings, Stale, StoredRow

__all__ = ["QdrantSink", "point_id"]

log = structlog.get_logger(__name__)


UPSERT_ROWS = 256
SCROLL_ROWS = 1000
DELETE_IDS = 1000


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


class QdrantSink(BaseSink):
    """A Qdrant collection holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "Qdrant"

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
        self._client: Any = None

    @classmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """qdrant_client (its local mode needs nothing more)."""
        return ("qdrant_client",)

    @property
    def local(self) -> bool:
        """True for a local-mode folder, which one process at a time can open."""
        return self._path is not None

    @property
    def connected(self) -> bool:
        """True while a client is open."""
        return self._client is not None

    # ----- connecting -----

    def connect(self) -> None:
        """Open the client and make sure the collection exists and fits this store.

        Raises SinkMismatchError when the collection exists with another dimension or
        fingerprint or was not made by embedd, and SinkError when the sink cannot be reached.
        """
        if self._client is not None:
            return
        q = _load_qdrant()
        if self._path is not None:
            client = self._open_local(q, self._path)
        else:
            try:
                # check_compatibility=False: the client would ask the server's version in a
                # thread of its own and warn there (on stderr) when it cannot; an unreachable
                # server shows as the first call's SinkError instead.
                client = q.client(
                    url=self._uri,
                    api_key=self._secret or None,
                    timeout=max(1, round(self._timeout)),
                    check_compatibility=False,
                )
            except q.errors as exc:
                raise self._error("connect", exc) from exc
        self._client = client
        try:
            self._ensure_collection(q)
        except BaseException:
            self._drop()
            raise
        log.info("sink_connected", sink=self._name, uri=self._uri, collection=self._collection)

    def close(self) -> None:
        """Close the client (a local folder is free for other processes then); a later call reconnects."""
        self._drop()

    def _open_local(self, q: _Qdrant, path: Path) -> Any:
        """The one client of this process for a local folder (it locks the folder), shared by its sinks."""
        key = str(path.absolute())
        with _local_lock:
            if key in _local_clients:
                client, users = _local_clients[key]
                _local_clients[key] = (client, users + 1)
                return client
            if not path.parent.is_dir():
                raise SinkError(self._name, f"cannot open Qdrant folder {path}: {path.parent} is missing")
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

    def _mismatch(self, what: str) -> SinkError:
        from daemon.errors import SinkMismatchError

        fix = "set another collection in its [[sink]] table, or drop this one"
        return SinkMismatchError(self._name, f"{self._where()} {what}; {fix}")

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
        log.info(
            "sink_collection_created",
            sink=self._name,
            collection=self._collection,
            dimensions=self._dimensions,
        )

    # ----- errors -----

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return _load_qdrant().errors

    def _ready(self) -> Any:
        self.connect()
        return self._client

    # ----- filters -----

    def _match(self, key: str, value: object) -> Any:
        m = _load_qdrant().models
        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    def _mine(self, *more: Any) -> Any:
        return _load_qdrant().models.Filter(must=[self._match("daemon", self._daemon), *more])

    # ----- changing rows -----

    def upsert(self, rows: Iterable[SinkRow]) -> int:
        """Write ``rows`` (of any sources) as this daemon's, in batches; returns how many."""
        m = _load_qdrant().models
        client = self._ready()
        batch: list[Any] = []
        total = 0
        for row in rows:
            batch.append(
                m.PointStruct(
                    id=point_id(self.row_id(row.source, row.chunk)),
                    vector=self._vector(row).tolist(),
                    payload=self._payload(row),
                )
            )
            if len(batch) >= UPSERT_ROWS:
                self._call("upsert", client.upsert, self._collection, batch, wait=True)
                total += len(batch)
                batch = []
        if batch:
            self._call("upsert", client.upsert, self._collection, batch, wait=True)
            total += len(batch)
        return total

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
        self._delete(self._mine(m.Filter(should=terms)))

    def _delete(self, flt: Any) -> None:
        client = self._ready()
        selector = _load_qdrant().models.FilterSelector(filter=flt)
        self._call("delete", client.delete, self._collection, points_selector=selector, wait=True)

    def delete_ids(self, ids: Iterable[str]) -> int:
        """Delete rows by primary key, in batches; returns how many keys were sent."""
        m = _load_qdrant().models
        client = self._ready()
        keys = [point_id(k) for k in ids]
        for i in range(0, len(keys), DELETE_IDS):
            selector = m.PointIdsList(points=keys[i : i + DELETE_IDS])
            self._call("delete", client.delete, self._collection, points_selector=selector, wait=True)
        return len(keys)

    def flush(self) -> None:
        """Nothing to do: every upsert waited until it was applied."""

    def wipe(self) -> None:
        """Delete every row of this daemon; other daemons' rows stay."""
        self._delete(self._mine())

    def drop(self) -> None:
        """Delete the whole collection, every daemon's rows; the next call makes it again."""
        client = self._ready()
        self._call("delete_collection", client.delete_collection, self._collection)
        self._drop()

    # ----- reading -----

    def _scroll(self, flt: Any, fields: list[str] | bool, *, vectors: bool = False) -> list[Any]:
        client = self._ready()
        out: list[Any] = []
        offset = None
        while True:
            points, offset = self._call(
                "scroll",
                client.scroll,
                self._collection,
                scroll_filter=flt,
                limit=SCROLL_ROWS,
                offset=offset,
                with_payload=fields,
                with_vectors=vectors,
            )
            out.extend(points)
            if offset is None:
                return out

    def digests(self) -> dict[str, RowDigest]:
        """Each of this daemon's rows by primary key: hash, page and timestamp; vectors are not read."""
        return {
            uuid.UUID(str(p.id)).hex: RowDigest(
                p.payload["hash"], p.payload.get("page"), int(p.payload["timestamp"])
            )
            for p in self._scroll(self._mine(), ["hash", "page", "timestamp"])
        }

    def sources(self) -> set[str]:
        """The sources this daemon has rows for."""
        return {p.payload["source"] for p in self._scroll(self._mine(), ["source"])}

    def count(self, source: str | None = None) -> int:
        """How many rows this daemon has (of ``source``, if given)."""
        client = self._ready()
        flt = self._mine() if source is None else self._mine(self._match("source", source))
        return int(self._call("count", client.count, self._collection, count_filter=flt, exact=True).count)

    def rows_for(self, source: str) -> list[StoredRow]:
        """This daemon's rows of ``source`` in chunk order, every field."""
        points = self._scroll(self._mine(self._match("source", source)), True, vectors=True)
        out = [
            StoredRow(
                id=uuid.UUID(str(p.id)).hex,
                vector=np.asarray(p.vector, dtype=np.float32),
                content=p.payload["content"],
                source=p.payload["source"],
                page=p.payload.get("page"),
                chunk=int(p.payload["chunk"]),
                timestamp=int(p.payload["timestamp"]),
                hash=p.payload["hash"],
                daemon=p.payload["daemon"],
            )
            for p in points
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
        ``daemon`` is given); ``source_prefix`` keeps sources that start with it (MatchPrefix)."""
        if k <= 0:
            return []
        m = _load_qdrant().models
        client = self._ready()
        must = []
        if daemon is not None:
            must.append(self._match("daemon", daemon))
        if source_prefix:
            must.append(m.FieldCondition(key="source", match=m.MatchPrefix(prefix=source_prefix)))
        res = self._call(
            "search",
            client.query_points,
            self._collection,
            query=self._query(vector).tolist(),
            limit=k,
            query_filter=m.Filter(must=must) if must else None,
            with_payload=True,
        )
        return [
            Hit(
                rank=rank,
                score=float(p.score),
                id=uuid.UUID(str(p.id)).hex,
                source=p.payload["source"],
                page=p.payload.get("page"),
                chunk=int(p.payload["chunk"]),
                content=p.payload["content"],
                daemon=p.payload["daemon"],
                hash=p.payload["hash"],
                timestamp=int(p.payload["timestamp"]),
            )
            for rank, p in enumerate(res.points, start=1)
        ]
