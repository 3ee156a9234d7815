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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import SinkError
from daemon.sinks.base import Fields, Sink
from daemon.sinks.rows import SinkRow, Stale, slash_prefixes

__all__ = ["ChromaSink"]

log = structlog.get_logger(__name__)

# Folder lock file -> [descriptor, sinks using it]: one flock per process and folder.
_FOLDER_LOCKS: dict[Path, list[int]] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


GET_ROWS = 5000
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


class ChromaSink(Sink):
    """A Chroma collection holding this daemon's copy of the store (and maybe other daemons' rows)."""

    engine = "Chroma"
    upsert_rows = 1000  # well under the engine's max batch (5,461 rows in chromadb 1.5)

    _client: Any = None
    _col: Any = None
    _locked: Path | None = None

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
    def connected(self) -> bool:
        """True while a client is open."""
        return self._col is not None

    # ----- connecting -----

    @property
    def _mine(self) -> Where:
        return {"daemon": self._daemon}

    def _open(self) -> None:
        c = _load_chroma()
        settings = c.settings(anonymized_telemetry=False)
        try:
            if self._path is not None:
                self._lock_folder(self._path)
                self._client = c.module.PersistentClient(path=str(self._path), settings=settings)
            else:
                self._client = self._http_client(c, settings)
        except c.errors as exc:
            raise self._error("connect", exc) from exc
        self._ensure_collection(c)

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
            raise self._mismatch(f"compares its vectors by {space}, not cosine")
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
        self._created()
        return col

    # ----- errors -----

    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return _load_chroma().errors

    # ----- changing rows -----

    def _write(self, rows: Sequence[SinkRow]) -> None:
        vectors = np.stack([self._vector(r) for r in rows])
        self._call(
            "upsert",
            self._col.upsert,
            ids=[self.row_id(r.source, r.chunk) for r in rows],
            embeddings=vectors,
            documents=[r.content for r in rows],
            metadatas=[self._metadata(r) for r in rows],
        )

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
        self._call("delete", self._col.delete, where=_all(self._mine, _any(*terms)))

    def _delete_keys(self, keys: Sequence[str]) -> None:
        self._call("delete", self._col.delete, ids=list(keys))

    def _wipe(self) -> None:
        self._call("delete", self._col.delete, where=self._mine)

    def _drop_collection(self) -> None:
        self._call("delete_collection", self._client.delete_collection, self._collection)

    # ----- reading -----

    def _filter(self, source: str | None) -> Where:
        return self._mine if source is None else _all(self._mine, {"source": source})

    def _scan(self, source: str | None, fields: Sequence[str]) -> list[Fields]:
        """Every row of this daemon (of ``source``), in pages of ``GET_ROWS``."""
        include = ["metadatas"]
        if "content" in fields:
            include.append("documents")
        if "vector" in fields:
            include.append("embeddings")
        return self._get(self._filter(source), include)

    def _get(self, where: Where, include: list[str]) -> list[Fields]:
        out: list[Fields] = []
        offset = 0
        while True:
            page = self._call(
                "get", self._col.get, where=where, include=include, limit=GET_ROWS, offset=offset
            )
            got = page["ids"]
            metas = page.get("metadatas") or [{}] * len(got)
            docs = page.get("documents") or [None] * len(got)
            emb = page.get("embeddings")
            vecs = list(emb) if emb is not None else [None] * len(got)
            for rid, meta, doc, vec in zip(got, metas, docs, vecs, strict=True):
                out.append({**(meta or {}), "id": rid, "content": doc, "vector": vec})
            if len(got) < GET_ROWS:
                return out
            offset += len(got)

    def _count(self, source: str | None) -> int:
        return len(self._get(self._filter(source), []))

    def _search(
        self, query: npt.NDArray[np.float32], k: int, *, source_prefix: str | None, daemon: str | None
    ) -> list[Fields]:
        terms: list[Where] = []
        if daemon is not None:
            terms.append({"daemon": daemon})
        folder = ""
        if source_prefix is not None:
            folder = source_prefix[: source_prefix.rfind("/") + 1]
            if folder:
                terms.append({"prefixes": {"$contains": folder}})
        where = _all(*terms) if terms else None
        exact = source_prefix is None or source_prefix == folder
        ask = k if exact else 4 * k
        while True:
            res = self._call(
                "search",
                self._col.query,
                query_embeddings=[query],
                n_results=ask,
                where=where,
                include=["metadatas", "documents", "distances"],
            )
            found: list[Fields] = [
                # Chroma answers the cosine distance.
                {**meta, "id": rid, "content": doc, "score": 1.0 - float(dist)}
                for rid, meta, doc, dist in zip(
                    res["ids"][0], res["metadatas"][0], res["documents"][0], res["distances"][0], strict=True
                )
            ]
            kept = [h for h in found if exact or h["source"].startswith(source_prefix or "")]
            # Past the folder filter, only some hits start with the prefix: ask for more until
            # k of them are found or the folder has no more rows.
            if len(kept) >= k or len(found) < ask:
                return kept[:k]
            ask *= 4
