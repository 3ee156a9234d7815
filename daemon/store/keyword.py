"""The keyword index: every live chunk's text, title and section in SQLite FTS5 (BM25), beside the store.

It lives in ``<store>.kw`` (and SQLite's ``-journal`` while a change is written) and is derived data: the JSON
store stays the source of truth. The ``Store`` tells it every change (``replace``, ``remove``,
``rename``) under the store lock, before the snapshot that shows the change is published, and
each change is committed at once (a rollback journal, ``synchronous=NORMAL``: a crash of the
process loses nothing committed; a power cut may lose the last commits, which the next start
repairs).

Per source it records a signature of its chunks (ids, hashes, sections, titles). At open the
signatures are compared with the store's, and only the sources that differ are indexed again,
so a SIGKILL between a keyword commit and the JSON save (or the reverse) is repaired at the next
start. A missing, corrupt or foreign file is rebuilt from the store, with progress.

Readers (searches on the API's threads) use connections of their own; a search checks every
hit against the snapshot it ranks, so it never returns a chunk that snapshot does not hold.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog

from daemon.store.entries import Row
from daemon.store.postings import FloatArray, IntArray, Postings
from daemon.store.signature import signature, signatures
from daemon.store.tokens import extra_terms

log = structlog.get_logger(__name__)

# 2: chunk rowids are AUTOINCREMENT, never reused (the in-memory postings key on them).
SCHEMA_VERSION = "2"
APP = "embedd-keyword"
TOKENIZE = "porter unicode61 remove_diacritics 2"
# Rows per transaction while (re)building: progress is reported and memory bounded per batch.
BUILD_BATCH = 2_000

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` (sources) while the index is built or repaired."""


def kw_path(store: Path) -> Path:
    """The keyword index of ``store``."""
    return store.with_name(store.name + ".kw")


class KeywordHit(NamedTuple):
    """A chunk the index matched: where it is, its hash (to check against a snapshot), its BM25.

    A named tuple, not a dataclass: a hybrid search for k files builds 1,200 of them, and a
    tuple is made in a third of the time."""

    rowid: int
    source: str
    chunk: int
    hash: str
    score: float  # -bm25(): higher is better


@dataclass(frozen=True)
class Marked:
    """A matched chunk's highlighted snippet and the words in it that matched."""

    snippet: str
    terms: tuple[str, ...]


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources(
    id INTEGER PRIMARY KEY, source TEXT UNIQUE NOT NULL, sig TEXT NOT NULL,
    suffix TEXT NOT NULL, mtime_ns INTEGER);
CREATE TABLE IF NOT EXISTS chunks(
    rowid INTEGER PRIMARY KEY AUTOINCREMENT, sid INTEGER NOT NULL, chunk INTEGER NOT NULL,
    hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_sid ON chunks(sid);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(content, title, section, extra, tokenize='{TOKENIZE}');
"""

_HL_OPEN, _HL_CLOSE = "\x02", "\x03"


class KeywordIndex:
    """The FTS5 sidecar of one store; build it with ``open`` (writer) or ``open_readonly``."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, readonly: bool, memory: bool = False) -> None:
        self.path = path
        self._conn = conn
        self._readonly = readonly
        self._memory = memory
        # A writable index on disk keeps no file open between changes (each change and each
        # search opens its own connection, for a millisecond): an open-for-writing file would
        # keep an administrator from remounting the store's file system read-only.
        self._parked = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self.broken: str | None = None
        """Why the index can no longer be trusted (a write failed); searches then skip it."""
        self.postings: Postings | None = None
        """The chunks' terms in memory, for ranking (``rank``); None until built (then ``search``)."""
        # Changes made while the postings are being built, applied to them when the build ends.
        self._pending: list[tuple[list[int], list[tuple[int, str]]]] | None = None
        self._plock = threading.Lock()
        self._builder: threading.Thread | None = None
        self._closing = threading.Event()

    # ----- opening -----

    @classmethod
    def open(cls, path: Path, sources: Mapping[str, Sequence[Row]], states: Mapping[str, int],
             *, progress: Progress | None = None) -> KeywordIndex:  # fmt: skip
        """Open (or create) the index at ``path`` for writing and make it match ``sources``.

        ``states`` maps a source to its recorded mtime (ns). A corrupt or foreign file is
        deleted and rebuilt.
        """
        try:
            return cls._open_synced(path, sources, states, progress)
        except sqlite3.DatabaseError as exc:
            log.warning("keyword_index_rebuild", path=str(path), reason=str(exc))
            _delete(path)
            return cls._open_synced(path, sources, states, progress)

    @classmethod
    def _open_synced(cls, path: Path, sources: Mapping[str, Sequence[Row]],
                     states: Mapping[str, int], progress: Progress | None) -> KeywordIndex:  # fmt: skip
        """Open the file at ``path``, check its schema and sync it; the connection is closed
        when any of that fails."""
        index = cls(path, _connect(path), readonly=False)
        try:
            index._check_schema()
            index.sync(sources, states, progress=progress)
            index._park()
            index._start_postings()
        except BaseException:
            with contextlib.suppress(Exception):
                index._conn.close()
            raise
        return index

    def _park(self) -> None:
        self._conn.close()
        self._parked = True

    @classmethod
    def open_readonly(cls, path: Path, sources: Mapping[str, Sequence[Row]]) -> KeywordIndex | None:
        """The index at ``path`` for reading only; None when it is missing or does not match ``sources``."""
        if not path.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            index = cls(path, conn, readonly=True)
            if index._meta().get("app") != APP or index._meta().get("version") != SCHEMA_VERSION:
                conn.close()
                return None
            have = dict(conn.execute("SELECT source, sig FROM sources"))
        except sqlite3.Error:
            return None
        want = signatures(sources)
        if have != want:
            conn.close()
            return None
        return index

    @classmethod
    def for_reading(
        cls, path: Path, sources: Mapping[str, Sequence[Row]], states: Mapping[str, int]
    ) -> tuple[KeywordIndex, str | None]:
        """The sidecar at ``path`` when it matches ``sources``, else one built in memory, and a
        note for the person searching in that case. Never writes the sidecar (a daemon may own it)."""
        index = cls.open_readonly(path, sources)
        if index is not None:
            return index, None
        started = time.perf_counter()
        index = cls.in_memory(sources, states)
        return index, (
            f"the keyword index {path} is missing or behind the store, so one was built in memory for "
            f"this search ({time.perf_counter() - started:.1f} s); the daemon brings the file up to date "
            "when it starts"
        )

    @classmethod
    def in_memory(cls, sources: Mapping[str, Sequence[Row]], states: Mapping[str, int]) -> KeywordIndex:
        """A throw-away index built in memory (for a reader whose sidecar is stale)."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        index = cls(Path(":memory:"), conn, readonly=False, memory=True)
        index._check_schema()
        index.sync(sources, states)
        return index

    def _meta(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM meta"))

    def _check_schema(self) -> None:
        """Create the tables, or raise DatabaseError for a file that is not ours (it is rebuilt)."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise sqlite3.DatabaseError("not an embedd keyword index")
        self._conn.executescript(_SCHEMA)
        with _tx(self._conn):
            meta = self._meta()
            if not meta:
                self._conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("app", APP), ("version", SCHEMA_VERSION)]
                )
            elif meta.get("app") != APP or meta.get("version") != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"keyword index of another version ({meta})")

    def sync(self, sources: Mapping[str, Sequence[Row]], states: Mapping[str, int],
             *, progress: Progress | None = None) -> int:  # fmt: skip
        """Index again every source whose signature differs; returns how many were."""
        started = time.perf_counter()
        have = dict(self._conn.execute("SELECT source, sig FROM sources"))
        want = signatures(sources)
        stale = [s for s in have if want.get(s) != have[s]]
        missing = [s for s in want if have.get(s) != want[s]]
        total = len(missing)
        if not stale and not missing:
            return 0
        log.info("keyword_index_sync", path=str(self.path), remove=len(stale), index=total)
        if progress is not None:
            progress(0, total)
        self._conn.execute("PRAGMA synchronous=OFF")
        try:
            with _tx(self._conn):
                for s in stale:
                    self._delete_source(s)
            batch = 0
            self._conn.execute("BEGIN")
            for done, s in enumerate(missing, start=1):
                self._insert_source(s, sources[s], states.get(s))
                batch += len(sources[s])
                if batch >= BUILD_BATCH:
                    self._conn.execute("COMMIT")
                    self._conn.execute("BEGIN")
                    batch = 0
                    if progress is not None:
                        progress(done, total)
            self._conn.execute("COMMIT")
        finally:
            if self._conn.in_transaction:
                self._conn.rollback()
            self._conn.execute("PRAGMA synchronous=NORMAL")
        if progress is not None:
            progress(total, total)
        log.info("keyword_index_synced", path=str(self.path), sources=total,
                 seconds=round(time.perf_counter() - started, 2))  # fmt: skip
        return len(set(stale) | set(missing))

    def close(self) -> None:
        """Close the index's connection (and stop building the postings). Idempotent."""
        self._closing.set()
        if self._builder is not None and self._builder is not threading.current_thread():
            self._builder.join(timeout=30)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # ----- the postings (ranking in memory) -----

    def _start_postings(self) -> None:
        """Build the postings from the sidecar in a thread; searches use FTS5 until they are ready."""
        with self._plock:
            self._pending = []
        self._builder = threading.Thread(target=self._build_postings, name="keyword-postings", daemon=True)
        self._builder.start()

    def _build_postings(self) -> None:
        started = time.perf_counter()
        postings = Postings()
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout=5000")
                last = 0
                # Short reads by rowid, each its own transaction: the writer is never held up. A
                # change made meanwhile is also in _pending; applying it again is harmless
                # (rowids are never reused, ``add`` skips a live rowid, ``remove`` a dead one).
                while not self._closing.is_set():
                    batch = _read_batch(conn, last, self._closing)
                    if not batch:
                        break
                    postings.load([(int(r[0]), _text(*r[1:])) for r in batch])
                    last = int(batch[-1][0])
            finally:
                conn.close()
        except (sqlite3.Error, MemoryError, ValueError) as exc:
            with self._plock:
                self._pending = None
            log.warning("keyword_postings_unavailable", path=str(self.path), reason=str(exc),
                        hint="keyword search ranks in SQLite (slower) until the next start")  # fmt: skip
            return
        if self._closing.is_set():
            return
        postings.fold()
        with self._plock:
            for dead, added in self._pending or ():
                postings.remove(dead)
                postings.add(added)
            self._pending = None
            self.postings = postings
        log.info("keyword_postings_ready", path=str(self.path), chunks=postings.count,
                 seconds=round(time.perf_counter() - started, 2))  # fmt: skip

    def _changed(self, dead: list[int], added: list[tuple[int, str]]) -> None:
        """Tell the postings (or the build in progress) of a committed change."""
        if not dead and not added:
            return
        with self._plock:
            if self._pending is not None:
                self._pending.append((dead, added))
            elif self.postings is not None:
                self.postings.remove(dead)
                self.postings.add(added)

    # ----- changing (the store's writer thread, under the store lock) -----

    def replace(self, source: str, rows: Sequence[Row], mtime_ns: int | None) -> None:
        """Make ``rows`` the indexed chunks of ``source``."""

        def change() -> tuple[list[int], list[tuple[int, str]]]:
            return self._delete_source(source), self._insert_source(source, rows, mtime_ns)

        self._write(change)

    def remove(self, source: str) -> None:
        """Forget ``source``."""
        self._write(lambda: (self._delete_source(source), []))

    def rename(self, old: str, new: str, rows: Sequence[Row], mtime_ns: int | None) -> None:
        """``old``'s chunks are ``new``'s now (ids change with the source: the signature too)."""

        def move() -> tuple[list[int], list[tuple[int, str]]]:
            dead = self._delete_source(new)
            cur = self._conn.execute(
                "UPDATE sources SET source=?, sig=?, suffix=?, mtime_ns=? WHERE source=?",
                (new, signature(rows), _suffix(new), mtime_ns, old),
            )
            if cur.rowcount == 0 and rows:
                return dead, self._insert_source(new, rows, mtime_ns)
            return dead, []

        self._write(move)

    def _write(self, change: Callable[[], tuple[list[int], list[tuple[int, str]]]]) -> None:
        if self.broken is not None:
            return
        try:
            if self._parked:
                self._conn = _connect(self.path)
            try:
                with _tx(self._conn):
                    dead, added = change()
            finally:
                if self._parked:
                    self._conn.close()
            self._changed(dead, added)
        except sqlite3.Error as exc:
            # The store changed in memory all the same; searches stop using this index until
            # the next start repairs it from the store.
            self.broken = str(exc)
            log.error("keyword_index_write_failed", path=str(self.path), reason=str(exc),
                      hint="keyword search is off until the daemon restarts and rebuilds it")  # fmt: skip

    def _delete_source(self, source: str) -> list[int]:
        """Forget ``source``'s chunks; their rowids."""
        row = self._conn.execute("SELECT id FROM sources WHERE source=?", (source,)).fetchone()
        if row is None:
            return []
        sid = row[0]
        dead = [int(r[0]) for r in self._conn.execute("SELECT rowid FROM chunks WHERE sid=?", (sid,))]
        self._conn.execute("DELETE FROM fts WHERE rowid IN (SELECT rowid FROM chunks WHERE sid=?)", (sid,))
        self._conn.execute("DELETE FROM chunks WHERE sid=?", (sid,))
        self._conn.execute("DELETE FROM sources WHERE id=?", (sid,))
        return dead

    def _insert_source(self, source: str, rows: Sequence[Row], mtime_ns: int | None) -> list[tuple[int, str]]:
        """Index ``source``'s chunks; their rowids and text (what the postings take)."""
        if not rows:
            return []
        added: list[tuple[int, str]] = []
        cur = self._conn.execute(
            "INSERT INTO sources(source, sig, suffix, mtime_ns) VALUES (?, ?, ?, ?)",
            (source, signature(rows), _suffix(source), mtime_ns),
        )
        sid = cur.lastrowid
        for r in rows:
            c = self._conn.execute(
                "INSERT INTO chunks(sid, chunk, hash) VALUES (?, ?, ?)", (sid, r.chunk, r.hash)
            )
            title, section = r.title or "", r.section or ""
            extra = extra_terms(f"{r.content}\n{title}\n{section}")
            self._conn.execute(
                "INSERT INTO fts(rowid, content, title, section, extra) VALUES (?, ?, ?, ?, ?)",
                (c.lastrowid, r.content, title, section, extra),
            )
            if self._pending is not None or self.postings is not None:
                added.append((int(c.lastrowid or 0), _text(r.content, title, section, extra)))
        return added

    # ----- searching (any thread) -----

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if not self._parked:
            with self._lock:
                yield self._conn
            return
        # One read-only connection per thread, kept: its page cache stays warm between searches
        # (a fresh connection per search tripled a keyword search's time at 100,000 chunks).
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA mmap_size=1073741824")
            self._local.conn = conn
        try:
            yield conn
        except sqlite3.DatabaseError:
            # A rebuilt or replaced file: the next search opens it afresh.
            self._local.conn = None
            conn.close()
            raise

    def search(
        self, match: str, limit: int, *, where: str = "", params: Sequence[object] = ()
    ) -> list[KeywordHit]:
        """The best ``limit`` chunks for the FTS5 expression ``match`` (built by ``daemon.query.keyword``).

        ``where`` is an extra SQL condition on ``s`` (sources: ``source``, ``suffix``,
        ``mtime_ns``) with ``params``, applied inside the query so a filter never leaves fewer
        hits than exist.
        """
        if not where:
            # FTS5 alone sorts by rank in C; the chunk rows are joined for the best ones only.
            sql = (
                "SELECT b.rowid, s.source, c.chunk, c.hash, b.score FROM "
                "(SELECT rowid, -rank AS score FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?) b "
                "JOIN chunks c ON c.rowid = b.rowid JOIN sources s ON s.id = c.sid ORDER BY b.score DESC"
            )
            args: tuple[object, ...] = (match, limit)
        else:
            sql = (
                "SELECT f.rowid, s.source, c.chunk, c.hash, -bm25(fts) FROM fts f "
                "JOIN chunks c ON c.rowid = f.rowid JOIN sources s ON s.id = c.sid "
                f"WHERE fts MATCH ? AND {where} ORDER BY bm25(fts) LIMIT ?"
            )
            args = (match, *params, limit)
        with self._reading() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [KeywordHit(int(a), str(b), int(c), str(d), float(e)) for a, b, c, d, e in rows]

    def rank(self, words: Sequence[str], phrases: Sequence[str], limit: int) -> list[KeywordHit] | None:
        """The best ``limit`` chunks by BM25 from the postings; None while they are not built.

        ``words`` are the query's single words and ``phrases`` its multi-word FTS5 phrases
        (``"save store"``), each as often as it counts. FTS5 finds and scores a phrase's chunks
        (it knows positions, so every occurrence counts); the postings score the words. Scores
        equal ``search``'s for the same terms.
        """
        postings = self.postings
        if postings is None or limit <= 0:
            return None
        phrase_rows: list[tuple[IntArray, FloatArray]] = []
        found: dict[str, tuple[IntArray, FloatArray]] = {}
        with self._reading() as conn:
            for p in phrases:
                if p not in found:
                    sql = "SELECT rowid, -bm25(fts) FROM fts WHERE fts MATCH ?"
                    rows = conn.execute(sql, (p,)).fetchall()
                    found[p] = (
                        np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                        np.fromiter((r[1] for r in rows), np.float32, len(rows)),
                    )
                phrase_rows.append(found[p])
            ranked = postings.rank(words, limit, phrases=phrase_rows)
            # (rowid, source, chunk, hash) by rowid: the columns are INTEGER and TEXT NOT NULL.
            info: dict[int, tuple[int, str, int, str]] = {}
            ids = [r for r, _ in ranked]
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                found_rows = conn.execute(
                    "SELECT c.rowid, s.source, c.chunk, c.hash FROM chunks c JOIN sources s ON s.id = c.sid "
                    f"WHERE c.rowid IN ({marks})",
                    part,
                )
                info.update((row[0], row) for row in found_rows)
        # A rowid the sidecar no longer holds (removed since the postings were read) is left out.
        return [KeywordHit(*info[r], score) for r, score in ranked if r in info]

    def mark(self, match: str, rowids: Sequence[int], *, tokens: int = 24) -> dict[int, Marked]:
        """Snippets (matched words in ``[...]``) and matched words for the chunks ``rowids``."""
        if not rowids:
            return {}
        marks = ",".join("?" * len(rowids))
        marked = ", ".join(f"highlight(fts, {col}, '{_HL_OPEN}', '{_HL_CLOSE}')" for col in range(4))
        sql = (
            f"SELECT rowid, snippet(fts, 0, '{_HL_OPEN}', '{_HL_CLOSE}', ' … ', {int(tokens)}), {marked} "
            f"FROM fts WHERE fts MATCH ? AND rowid IN ({marks})"
        )
        with self._reading() as conn:
            rows = conn.execute(sql, (match, *rowids)).fetchall()
        out: dict[int, Marked] = {}
        for rowid, snip, *cols in rows:
            terms: dict[str, None] = {}
            for text in cols:
                for piece in str(text).split(_HL_OPEN)[1:]:
                    terms.setdefault(piece.split(_HL_CLOSE, 1)[0].lower(), None)
            out[int(rowid)] = Marked(
                " ".join(str(snip).replace(_HL_OPEN, "[").replace(_HL_CLOSE, "]").split()), tuple(terms)
            )
        return out

    def size_bytes(self) -> int:
        """The sidecar's size on disk."""
        total = 0
        for p in (self.path, Path(f"{self.path}-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total


_POSTINGS_BATCH = (
    "SELECT rowid, content, title, section, extra FROM fts WHERE rowid > ? ORDER BY rowid LIMIT ?"
)


def _read_batch(
    conn: sqlite3.Connection, after: int, closing: threading.Event
) -> list[tuple[int, str, str, str, str]]:
    """The next rows after rowid ``after``; a writer busy for long (a bulk index) is waited out."""
    give_up = time.monotonic() + 600
    while True:
        try:
            return conn.execute(_POSTINGS_BATCH, (after, BUILD_BATCH)).fetchall()
        except sqlite3.OperationalError as exc:
            # busy_timeout has passed: the store's writer commits back to back. Try again
            # (for up to ten minutes) rather than leave keyword search slow until a restart.
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > give_up or closing.is_set():
                raise
            closing.wait(0.2)


def _text(content: str, title: str, section: str, extra: str) -> str:
    """A chunk's columns as one text: its terms are the postings', its length BM25's."""
    return f"{content}\n{title}\n{section}\n{extra}"


def _suffix(source: str) -> str:
    name = source.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


@contextlib.contextmanager
def _tx(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction: committed whole, or rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    # A rollback journal, not WAL: readers then open the file read-only and keep no -shm open
    # for writing, so nothing blocks remounting the store's file system read-only.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _delete(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
