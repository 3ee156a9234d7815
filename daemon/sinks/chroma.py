"""The Chroma sink: chromadb against a Chroma server (``chroma run``) or a PersistentClient folder.

This is the only module that imports chromadb, and only when a sink connects. A folder
opens chromadb's embedded engine in this process; several processes may write one folder,
but a process does not see the others' rows in its searches, so, like a Milvus Lite file,
embedd opens it from one process at a time (``local``). A server URL is the shared setup.

Chroma embeds nothing here: every call passes embedd's vectors and ``embedding_function=None``,
so chromadb never loads (or downloads) a model of its own. Its ``where`` filters have no
string-prefix operator, so each row also lists its folder prefixes (``prefixes``), and a
``--source-prefix`` search asks for the longest folder prefix of what was asked and keeps
the sources that truly start with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import SinkError, SinkMismatchError
from daemon.query.hit import Hit
from daemon.sinks.base import BaseSink, RowDigest, SinkRow, SinkSettings, Stale, StoredRow, slash_prefixes

__all__ = ["ChromaSink"]

log = structlog.get_logger(__name__)

# Folder lock file -> [descriptor, sinks using it]: one flock per process and folder.
_FOLDER_LOCKS: dict[Path, list[int]] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


UPSERT_ROWS = 1000  # well under the engine's max batch (5,461 rows in chromadb 1.5)
GET_ROWS = 5000
DELETE_IDS = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
Where = dict[str, Any]


class _Chroma(NamedTuple):
    module: Any  # chromadb
    settings: Any  # chromadb.config.Settings
    not_found: type[BaseException]
    errors: tuple[type[BaseException], ...]
    httpx: Any


@functools.cache
def _load_chroma() -> _Chroma:
    import chromadb
    import httpx
    from chromadb.config import Settings
    from chromadb.errors import ChromaError, NotFoundError

    # A server answers with ChromaError subclasses or fails in httpx; the embedded engine
    # and the client's own checks raise ValueError or RuntimeError.
    return _Chroma(
        chromadb,
        Settings,
        NotFoundError,
        (ChromaError, httpx.HTTPError, ValueError, RuntimeError, OSError),
        httpx,
    )


def _all(*terms: Where) -> Where:
    return terms[0] if len(terms) == 1 else {"$and": list(terms)}


def _any(*terms: Where) -> Where:
    return terms[0] if len(terms) == 1 else {"$or": list(terms)}


class ChromaSink(BaseSink):
    """A Chroma collection holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "Chroma"

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
        self._col: Any = None
        self._mine: Where = {"daemon": daemon}
        self._locked: Path | None = None

    @classmethod
    def client_modules(cls, uri: str) -> tuple[str, ...]:
        """chromadb (it brings httpx)."""
        return ("chromadb",)

    @classmethod
    def check_collection(cls, name: str) -> str | None:
        """Chroma's rule: 3 to 512 characters, starting and ending with a letter or digit."""
        if _NAME.match(name):
            return None
        return "a Chroma collection name has 3 to 512 characters and starts and ends with a letter or digit"

    @property
    def local(self) -> bool:
        """True for a PersistentClient folder (see the module's docstring)."""
        return self._path is not None

    @property
    def connected(self) -> bool:
        """True while a client is open."""
        return self._col is not None

    # ----- connecting -----

    def connect(self) -> None:
        """Open the client and make sure the collection exists and fits this store.

        Raises SinkMismatchError when the collection exists with another dimension or
        fingerprint or was not made by embedd, and SinkError when the sink cannot be reached.
        """
        if self._col is not None:
            return
        c = _load_chroma()
        settings = c.settings(anonymized_telemetry=False)
        try:
            if self._path is not None:
                if not self._path.parent.is_dir():
                    raise SinkError(
                        self._name, f"cannot open Chroma folder {self._path}: {self._path.parent} is missing"
                    )
                self._lock_folder(self._path)
                self._client = c.module.PersistentClient(path=str(self._path), settings=settings)
            else:
                self._client = self._http_client(c, settings)
        except c.errors as exc:
            self._drop()
            raise self._error("connect", exc) from exc
        except BaseException:
            self._drop()
            raise
        try:
            self._ensure_collection(c)
        except BaseException:
            self._drop()
            raise
        log.info("sink_connected", sink=self._name, uri=self._uri, collection=self._collection)

    def _http_client(self, c: _Chroma, settings: Any) -> Any:
        url = urlsplit(self._uri)
        ssl = url.scheme == "https"
        host = url.hostname or "localhost"
        port = url.port or (443 if ssl else 8000)
        base = f"{url.scheme}://{url.netloc}"
        # Chroma has sent the key under both names over its versions; a server reads the one
        # it is configured for.
        headers = (
            {"Authorization": f"Bearer {self._secret}", "X-Chroma-Token": self._secret}
            if self._secret
            else {}
        )
        # chromadb's HTTP client waits forever for an answer (httpx timeout=None), and its
        # constructor already talks to the server: ask with a timeout first, so a server that
        # accepts connections but does not answer fails here instead of hanging the sink.
        c.httpx.get(f"{base}/api/v2/heartbeat", headers=headers, timeout=self._timeout).raise_for_status()
        client = c.module.HttpClient(host=host, port=port, ssl=ssl, headers=headers, settings=settings)
        session = getattr(getattr(client, "_server", None), "_session", None)
        if session is not None:
            session.timeout = c.httpx.Timeout(self._timeout)
        else:
            log.warning("sink_no_timeout", sink=self._name, reason="this chromadb has no session to time out")
        return client

    def close(self) -> None:
        """Close the client; a later call reconnects."""
        self._drop()

    def _lock_folder(self, folder: Path) -> None:
        """Hold ``<folder>.lock`` while connected: chromadb does not stop two processes from
        writing one folder, and each would miss the other's rows. Sinks of one process share
        the lock (chromadb shares one engine per folder inside a process)."""
        lock = folder.with_name(folder.name + ".lock")
        key = lock.resolve()
        with _FOLDER_LOCKS_GUARD:
            held = _FOLDER_LOCKS.get(key)
            if held is None:
                try:
                    fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except OSError as exc:
                    raise SinkError(
                        self._name, f"cannot create the lock {lock}: {exc.strerror or exc}"
                    ) from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise SinkError(
                        self._name,
                        f"Chroma folder {folder} is open in another process (it holds {lock}); "
                        "one process at a time",
                    ) from None
                held = _FOLDER_LOCKS[key] = [fd, 0]
            held[1] += 1
        self._locked = key

    def _unlock_folder(self) -> None:
        key, self._locked = self._locked, None
        if key is None:
            return
        with _FOLDER_LOCKS_GUARD:
            held = _FOLDER_LOCKS[key]
            held[1] -= 1
            if held[1] == 0:
                os.close(held[0])
                del _FOLDER_LOCKS[key]

    def _drop(self) -> None:
        client, self._client, self._col = self._client, None, None
        self._unlock_folder()
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.close()
        # chromadb's close() leaves the HTTP connections of an HttpClient (and of the admin
        # client it made to check the tenant) open; each HttpClient has its own, so close them.
        for owner in (client, getattr(client, "_admin_client", None)):
            session = getattr(getattr(owner, "_server", None), "_session", None)
            if session is not None:
                with contextlib.suppress(Exception):
                    session.close()

    def _ensure_collection(self, c: _Chroma) -> None:
        client = self._client
        try:
            col = client.get_collection(self._collection, embedding_function=None)
        except c.not_found:
            col = self._create(c)
        except c.errors as exc:
            raise self._error("get_collection", exc) from exc
        self._incarnation = self._check_made_by_embedd(col.metadata, dimensions=None)
        space = ((getattr(col, "configuration_json", None) or {}).get("hnsw") or {}).get("space")
        if space not in (None, "cosine"):
            raise SinkMismatchError(
                self._name,
                f"{self._where()} compares its vectors by {space}, not cosine; set another collection "
                "in its [[sink]] table, or drop this one",
            )
        self._col = col

    def _create(self, c: _Chroma) -> Any:
        try:
            col = self._client.create_collection(
                self._collection,
                configuration={"hnsw": {"space": "cosine"}},
                metadata=self._properties(),
                embedding_function=None,
            )
        except c.errors as exc:
            # Another daemon may have made it meanwhile; then the caller checks theirs.
            try:
                return self._client.get_collection(self._collection, embedding_function=None)
            except c.errors:
                raise self._error("create_collection", exc) from exc
        log.info(
            "sink_collection_created",
            sink=self._name,
            collection=self._collection,
            dimensions=self._dimensions,
        )
        return col

    # ----- errors -----

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return _load_chroma().errors

    def _ready(self) -> Any:
        self.connect()
        return self._col

    # ----- changing rows -----

    def upsert(self, rows: Iterable[SinkRow]) -> int:
        """Write ``rows`` (of any sources) as this daemon's, in batches; returns how many."""
        col = self._ready()
        total = 0
        batch: list[SinkRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= UPSERT_ROWS:
                total += self._upsert(col, batch)
                batch = []
        if batch:
            total += self._upsert(col, batch)
        return total

    def _upsert(self, col: Any, rows: list[SinkRow]) -> int:
        vectors = np.stack([self._vector(r) for r in rows])
        self._call(
            "upsert",
            col.upsert,
            ids=[self.row_id(r.source, r.chunk) for r in rows],
            embeddings=vectors,
            documents=[r.content for r in rows],
            metadatas=[self._metadata(r) for r in rows],
        )
        return len(rows)

    def _metadata(self, row: SinkRow) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "source": row.source,
            "prefixes": slash_prefixes(row.source),
            "chunk": row.chunk,
            "timestamp": row.timestamp,
            "hash": row.hash,
            "daemon": self._daemon,
        }
        if row.page is not None:  # Chroma drops None values: no key means no page
            meta["page"] = row.page
        return meta

    def _delete_stale(self, stale: Sequence[Stale]) -> None:
        terms = []
        for st in stale:
            src = {"source": st.source}
            if st.keep is not None:
                terms.append(_all(src, {"chunk": {"$nin": list(st.keep)}}))
            elif st.keep_below == 0:
                terms.append(src)
            else:
                terms.append(_all(src, {"chunk": {"$gte": st.keep_below}}))
        col = self._ready()
        self._call("delete", col.delete, where=_all(self._mine, _any(*terms)))

    def delete_ids(self, ids: Iterable[str]) -> int:
        """Delete rows by primary key, in batches; returns how many keys were sent."""
        col = self._ready()
        keys = list(ids)
        for i in range(0, len(keys), DELETE_IDS):
            self._call("delete", col.delete, ids=keys[i : i + DELETE_IDS])
        return len(keys)

    def flush(self) -> None:
        """Nothing to do: Chroma has applied every write when the call returns."""

    def wipe(self) -> None:
        """Delete every row of this daemon; other daemons' rows stay."""
        col = self._ready()
        self._call("delete", col.delete, where=self._mine)

    def drop(self) -> None:
        """Delete the whole collection, every daemon's rows; the next call makes it again."""
        self._ready()
        self._call("delete_collection", self._client.delete_collection, self._collection)
        self._drop()

    # ----- reading -----

    def _get(self, where: Where, include: list[str]) -> tuple[list[str], list[Any], list[Any], list[Any]]:
        """Every row ``where`` matches, in pages: ids, metadatas, documents, embeddings."""
        col = self._ready()
        ids: list[str] = []
        metas: list[Any] = []
        docs: list[Any] = []
        vecs: list[Any] = []
        offset = 0
        while True:
            page = self._call("get", col.get, where=where, include=include, limit=GET_ROWS, offset=offset)
            got = page["ids"]
            ids.extend(got)
            metas.extend(page.get("metadatas") or [None] * len(got))
            docs.extend(page.get("documents") or [None] * len(got))
            emb = page.get("embeddings")
            vecs.extend(list(emb) if emb is not None else [None] * len(got))
            if len(got) < GET_ROWS:
                return ids, metas, docs, vecs
            offset += len(got)

    def digests(self) -> dict[str, RowDigest]:
        """Each of this daemon's rows by primary key: hash, page and timestamp; vectors are not read."""
        ids, metas, _, _ = self._get(self._mine, ["metadatas"])
        return {
            i: RowDigest(m["hash"], m.get("page"), int(m["timestamp"]))
            for i, m in zip(ids, metas, strict=True)
        }

    def sources(self) -> set[str]:
        """The sources this daemon has rows for."""
        _, metas, _, _ = self._get(self._mine, ["metadatas"])
        return {m["source"] for m in metas}

    def count(self, source: str | None = None) -> int:
        """How many rows this daemon has (of ``source``, if given)."""
        where = self._mine if source is None else _all(self._mine, {"source": source})
        return len(self._get(where, [])[0])

    def rows_for(self, source: str) -> list[StoredRow]:
        """This daemon's rows of ``source`` in chunk order, every field."""
        ids, metas, docs, vecs = self._get(
            _all(self._mine, {"source": source}), ["metadatas", "documents", "embeddings"]
        )
        out = [
            StoredRow(
                id=i,
                vector=np.asarray(v, dtype=np.float32),
                content=d,
                source=m["source"],
                page=m.get("page"),
                chunk=int(m["chunk"]),
                timestamp=int(m["timestamp"]),
                hash=m["hash"],
                daemon=m["daemon"],
            )
            for i, m, d, v in zip(ids, metas, docs, vecs, strict=True)
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
        col = self._ready()
        query = self._query(vector)
        terms: list[Where] = []
        if daemon is not None:
            terms.append({"daemon": daemon})
        folder = ""
        if source_prefix:
            folder = source_prefix[: source_prefix.rfind("/") + 1]
            if folder:
                terms.append({"prefixes": {"$contains": folder}})
        where = _all(*terms) if terms else None
        exact = not source_prefix or source_prefix == folder
        ask = k if exact else 4 * k
        while True:
            res = self._call(
                "search",
                col.query,
                query_embeddings=[query],
                n_results=ask,
                where=where,
                include=["metadatas", "documents", "distances"],
            )
            found = list(
                zip(res["ids"][0], res["metadatas"][0], res["documents"][0], res["distances"][0], strict=True)
            )
            kept = [h for h in found if exact or h[1]["source"].startswith(source_prefix or "")]
            # Past the folder filter, only some hits start with the prefix: ask for more until
            # k of them are found or the folder has no more rows.
            if len(kept) >= k or len(found) < ask:
                break
            ask *= 4
        return [
            Hit(
                rank=rank,
                score=1.0 - float(dist),  # Chroma answers the cosine distance
                id=rid,
                source=m["source"],
                page=m.get("page"),
                chunk=int(m["chunk"]),
                content=doc,
                daemon=m["daemon"],
                hash=m["hash"],
                timestamp=int(m["timestamp"]),
            )
            for rank, (rid, m, doc, dist) in enumerate(kept[:k], start=1)
        ]
