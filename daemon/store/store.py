"""The JSON embedding store: entries in memory, vectors in one float32 matrix, atomic saves.

The file format is described in ``daemon.store.format``; reading it in ``daemon.store.load``;
the optional sidecar cache in ``daemon.store.cache``; durable writes and the lock in
``daemon.store.io``. This module keeps the state and decides what each save must write:
an entry that did not change since the last save keeps its bytes in the file, and the next
save copies them (in runs, in the kernel) instead of serialising 384 floats again.

A Store is not thread-safe: one thread owns it (the daemon's worker, under the store lock).
Searches on other threads read a ``Snapshot`` (``daemon.store.snapshot``) instead, which the
store never changes under them: rows are appended past a snapshot's end, a compaction copies
into a fresh matrix once a snapshot has seen the current one, and a rename replaces row
records rather than editing them.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
import structlog

from daemon.errors import FingerprintMismatchError, StoreCorruptError, StoreError
from daemon.store.ann import MIN_ROWS, VectorIndex
from daemon.store.cache import JsonSignature, cache_path, remove_cache, write_cache
from daemon.store.entries import Entry, NewEntry, SaveStats, StoredChunk
from daemon.store.format import (
    NEWLINE,
    Columns,
    Extra,
    FileState,
    Fingerprint,
    FloatMatrix,
    Header,
    SpanArray,
    encode_header,
    entry_id,
    utc_now_iso,
)
from daemon.store.io import AtomicWriter, StoreLock, move_aside, remove_stale_temps
from daemon.store.keyword import KeywordIndex, Progress, kw_path
from daemon.store.load import Loaded, check_compatible, load
from daemon.store.snapshot import Snapshot
from daemon.store.splice import write_spliced

__all__ = [
    "Entry",
    "FileState",
    "Fingerprint",
    "NewEntry",
    "SaveStats",
    "Snapshot",
    "Store",
    "StoredChunk",
    "lock_path",
]

log = structlog.get_logger(__name__)


@dataclass(slots=True, eq=False)
class _Row:
    """One entry; ``row`` is its row in the matrix and in the spans array."""

    id: str
    content: str
    source: str
    page: int | None
    chunk: int
    hash: str
    timestamp: int
    extra: Extra | None
    row: int
    section: str | None = None
    title: str | None = None
    alive: bool = True


def lock_path(store: Path) -> Path:
    """The lock file of ``store``."""
    return store.with_name(store.name + ".lock")


class Store:
    """The embedding store of one daemon. Build it with ``open`` or ``open_readonly``."""

    def __init__(self, path: Path, header: Header, cols: Columns | None, *, readonly: bool, via: str) -> None:
        self._path = path
        self._header = header
        self._readonly = readonly
        self._lock: StoreLock | None = None
        self._src_fd: int | None = None
        self._dirty = False
        self._closed = False
        self.loaded_via = via
        """How the store was read: cache, parse, generic, new, corrupt or rebuild."""
        dims = header.dimensions
        self._rows: list[_Row] = []
        self._dead = 0
        self._by_source: dict[str, list[_Row]] = {}
        self._by_hash: dict[str, list[_Row]] = {}
        self._vecs: FloatMatrix = np.empty((0, dims), dtype=np.float32)
        # Row i: offset and length of entry i's bytes in the file at _src_fd; offset -1 when
        # the entry is not there as it is now, so the next save serialises it.
        self._spans: SpanArray = np.empty((0, 2), dtype=np.int64)
        # Row i is live; kept beside the matrix so a snapshot copies n bytes, not n rows.
        self._alive: npt.NDArray[np.bool_] = np.empty(0, dtype=np.bool_)
        # Bumped by every change a reader could see; a snapshot of the same version is reused.
        self._version = 0
        self._snapshot: Snapshot | None = None
        # True once a snapshot holds a view of _vecs: compaction must then not move rows in place.
        self._vecs_shared = False
        # The keyword index (``daemon.store.keyword``) told of every change; None when off.
        self._keyword: KeywordIndex | None = None
        # The approximate vector index (``daemon.store.ann``) of a writable store; None when off.
        # It numbers rows by layout: _layout counts the compactions that moved rows down.
        self._ann: VectorIndex | None = None
        self._layout = 0
        if cols is not None:
            self._adopt(cols)

    def _adopt(self, cols: Columns) -> None:
        self._vecs = cols.matrix
        self._alive = np.ones(len(cols.matrix), dtype=np.bool_)
        self._spans = np.full((len(cols.matrix), 2), -1, dtype=np.int64)
        if cols.spans is not None:
            self._spans[: len(cols)] = cols.spans
        self._rows = [
            _Row(eid, content, source, page, chunk, hash_, ts, extra, row, section, title)
            for row, (eid, content, source, page, chunk, hash_, ts, extra, section, title) in enumerate(
                zip(
                    cols.ids,
                    cols.contents,
                    cols.sources,
                    cols.pages,
                    cols.chunks,
                    cols.hashes,
                    cols.timestamps,
                    cols.extras,
                    cols.sections,
                    cols.titles,
                    strict=True,
                )
            )
        ]
        for r in self._rows:
            self._by_source.setdefault(r.source, []).append(r)
            self._by_hash.setdefault(r.hash, []).append(r)
        for rows in self._by_source.values():
            rows.sort(key=lambda r: r.chunk)

    # ----- opening and closing -----

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        model: str,
        dimensions: int,
        fingerprint: Fingerprint,
        rebuild: bool = False,
        keyword: bool = True,
        keyword_progress: Progress | None = None,
        ann_min_rows: int | None = MIN_ROWS,
    ) -> Store:
        """Open ``path`` for writing, holding its lock until ``close``.

        A missing store starts empty; a corrupt one is moved aside to ``<name>.corrupt-<UTC>``
        and an empty one started. Raises StoreLockedError when another process holds the
        lock, and FingerprintMismatchError when the store was built with another model,
        width or chunking; with ``rebuild`` such a store is instead moved aside to
        ``<name>.bak-<UTC>`` and an empty one started, so everything is embedded again. A
        store that matches is opened as it is, ``rebuild`` or not. Once it holds ``ann_min_rows``
        live entries, an approximate vector index is built beside it (``daemon.store.ann``);
        None keeps every search exact.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {path.parent}: {exc.strerror or exc}") from exc
        try:
            lock = StoreLock.acquire(lock_path(path))
        except OSError as exc:
            raise StoreError(f"cannot take the lock {lock_path(path)}: {exc.strerror or exc}") from exc
        try:
            with _gc_paused():
                store = cls._open_locked(path, model, dimensions, fingerprint, rebuild)
            if keyword:
                store._open_keyword(keyword_progress)
            if ann_min_rows is not None and fingerprint.normalize:
                store._ann = VectorIndex(path, dimensions, fingerprint, min_rows=ann_min_rows)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    def _open_keyword(self, progress: Progress | None) -> None:
        """Open the keyword sidecar and bring it in step with the entries (a missing one is built)."""
        path = kw_path(self._path)
        try:
            self._keyword = KeywordIndex.open(path, self._by_source, self._mtimes(), progress=progress)
        except (OSError, sqlite3.Error) as exc:
            log.error("keyword_index_unavailable", path=str(path), reason=str(exc),
                      hint="searches rank by vectors only until the index can be written")  # fmt: skip

    def _mtimes(self) -> dict[str, int]:
        return {s: st.mtime_ns for s, st in self._header.files.items()}

    def keyword_reader(self) -> tuple[KeywordIndex | None, str | None]:
        """For a read-only store: its keyword sidecar when it matches, else one built in memory.

        Never writes the sidecar (a daemon may own it). Returns the index and a note for the
        person searching when the sidecar could not be used.
        """
        if self._keyword is not None:
            return self._keyword, None
        index = KeywordIndex.open_readonly(kw_path(self._path), self._by_source)
        note = None
        if index is None:
            started = time.perf_counter()
            index = KeywordIndex.in_memory(self._by_source, self._mtimes())
            note = (
                f"the keyword index {kw_path(self._path)} is missing or behind the store, so one was built "
                f"in memory for this search ({time.perf_counter() - started:.1f} s); the daemon brings the "
                "file up to date when it starts"
            )
        self._keyword = index
        return index, note

    @property
    def keyword(self) -> KeywordIndex | None:
        """The keyword index, when open (see ``keyword_reader`` for a read-only store)."""
        return self._keyword

    @classmethod
    def _open_locked(
        cls, path: Path, model: str, dimensions: int, fingerprint: Fingerprint, rebuild: bool
    ) -> Store:
        remove_stale_temps(path, cache_path(path))
        fresh = Header(model, dimensions, utc_now_iso(), utc_now_iso(), fingerprint)
        try:
            try:
                loaded = load(path, dimensions, keep_fd=True)
            except FileNotFoundError:
                return cls._fresh(path, fresh, "new")
            except StoreCorruptError as exc:
                moved = move_aside(path, "corrupt")
                remove_cache(path)
                log.warning("store_corrupt", path=str(path), moved_to=str(moved), reason=exc.reason)
                return cls._fresh(path, fresh, "corrupt")
            try:
                check_compatible(path, loaded, model, dimensions, fingerprint)
            except FingerprintMismatchError as exc:
                if loaded.fd is not None:
                    os.close(loaded.fd)
                if not rebuild:
                    raise
                moved = move_aside(path, "bak")
                remove_cache(path)
                log.warning("store_rebuild", path=str(path), moved_to=str(moved), reason=str(exc))
                return cls._fresh(path, fresh, "rebuild")
        except OSError as exc:
            raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
        try:
            return cls._from_loaded(path, loaded, model, dimensions, fingerprint)
        except BaseException:
            if loaded.fd is not None:
                os.close(loaded.fd)
            raise

    @classmethod
    def _fresh(cls, path: Path, header: Header, via: str) -> Store:
        store = cls(path, header, None, readonly=False, via=via)
        store._dirty = True
        return store

    @classmethod
    def _from_loaded(
        cls, path: Path, loaded: Loaded, model: str, dimensions: int, fingerprint: Fingerprint
    ) -> Store:
        header = loaded.header
        holds_data = len(loaded.cols) > 0 or bool(header.files)
        if header.fingerprint is None and holds_data:
            # The walkthrough's stores carry no fingerprint; model and width match, so we
            # take them as ours. Vectors are still reused only where a chunk's hash matches.
            log.warning("store_fingerprint_missing", path=str(path), detail="adopting the configured one")
        adopted = (
            header.fingerprint != fingerprint or header.model != model or header.dimensions != dimensions
        )
        header = replace(header, model=model, dimensions=dimensions, fingerprint=fingerprint)
        if not len(loaded.cols):
            loaded.cols.matrix = np.empty((0, dimensions), dtype=np.float32)
        store = cls(path, header, loaded.cols, readonly=False, via=loaded.via)
        store._src_fd = loaded.fd
        # A foreign layout is rewritten in ours at the first save, so later starts are fast.
        store._dirty = adopted or loaded.fd is None
        if loaded.via == "parse" and loaded.sig is not None:
            write_cache(path, loaded.sig, loaded.cols)
        log.info(
            "store_loaded", path=str(path), entries=len(loaded.cols), files=len(header.files), via=loaded.via
        )
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open ``path`` for reading only: no lock, never writes, never blocks the daemon.

        Raises StoreError when there is no store, StoreCorruptError when it is not valid.
        """
        path = Path(path)
        with _gc_paused():
            try:
                loaded = load(path, 0, keep_fd=False)
            except FileNotFoundError:
                raise StoreError(f"no store at {path}: the daemon has not written one yet") from None
            except OSError as exc:
                raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
            return cls(path, loaded.header, loaded.cols, readonly=True, via=loaded.via)

    def close(self) -> None:
        """Release the lock and the file handle; does not save. Idempotent."""
        if self._keyword is not None:
            self._keyword.close()
        if self._ann is not None:
            self._ann.close()
            self._ann = None
        if self._src_fd is not None:
            os.close(self._src_fd)
            self._src_fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----- reading -----

    @property
    def path(self) -> Path:
        """The JSON file."""
        return self._path

    @property
    def count(self) -> int:
        """Number of entries."""
        return len(self._rows) - self._dead

    @property
    def dimensions(self) -> int:
        """Width of every vector."""
        return self._header.dimensions

    @property
    def model(self) -> str:
        """Model name recorded in the store."""
        return self._header.model

    @property
    def fingerprint(self) -> Fingerprint | None:
        """What the vectors were made with; None only for a foreign store opened read-only."""
        return self._header.fingerprint

    @property
    def created(self) -> str:
        """ISO 8601 time the store was first written."""
        return self._header.created

    @property
    def updated(self) -> str:
        """ISO 8601 time of the last save."""
        return self._header.updated

    @property
    def declared_count(self) -> int:
        """The ``count`` the file declared when read (0 when it declares none); ``count`` is the truth."""
        return self._header.count

    @property
    def dirty(self) -> bool:
        """True while the file lags behind the state in memory."""
        return self._dirty

    def sources(self) -> set[str]:
        """Every source the store knows: indexed files, also those that gave no chunk."""
        return set(self._header.files) | set(self._by_source)

    def file_state(self, source: str) -> FileState | None:
        """The stat signature recorded when ``source`` was indexed, if any."""
        return self._header.files.get(source)

    def entries_for(self, source: str) -> list[StoredChunk]:
        """The chunks stored for ``source``, in chunk order."""
        return [
            StoredChunk(r.id, r.chunk, r.page, r.hash, r.timestamp) for r in self._by_source.get(source, ())
        ]

    def source_entries(self, source: str) -> list[Entry]:
        """Every entry of ``source`` in chunk order, with content and vector (views: copy to keep)."""
        return [self._entry(r) for r in self._by_source.get(source, ())]

    def vector_for_hash(self, hash_: str) -> tuple[FloatMatrix, int] | None:
        """A stored vector for a chunk with this content hash (any source) and its timestamp."""
        rows = self._by_hash.get(hash_)
        if not rows:
            return None
        r = rows[0]
        return self._vecs[r.row].copy(), r.timestamp

    def matrix(self) -> FloatMatrix:
        """The (count, dimensions) float32 vectors, row i being ``entry(i)``; read-only view.

        The view is valid until the store next changes.
        """
        self._compact()
        view = self._vecs[: len(self._rows)]
        view.flags.writeable = False
        return view

    def entry(self, row: int) -> Entry:
        """The entry at row ``row`` of ``matrix()``."""
        self._compact()
        return self._entry(self._rows[row])

    def iter_entries(self) -> Iterator[Entry]:
        """Every entry in file order (the order of ``matrix()`` rows); do not change the store meanwhile."""
        self._compact()
        for r in self._rows:
            yield self._entry(r)

    @property
    def version(self) -> int:
        """Changes when anything a search could see changes (entries, sources)."""
        return self._version

    def snapshot(self) -> Snapshot:
        """The entries as they are now, for reading on another thread without the store's lock.

        Cheap (a copy of the row list and of the live-row flags) and cached until the next
        change; call it under the lock that guards the store's writer.
        """
        snap = self._snapshot
        if snap is not None and snap.version == self._version:
            return snap
        n = len(self._rows)
        matrix = self._vecs[:n]
        matrix.flags.writeable = False
        self._vecs_shared = True
        snap = Snapshot(
            path=self._path,
            version=self._version,
            model=self._header.model,
            dimensions=self._header.dimensions,
            fingerprint=self._header.fingerprint,
            files=len(self.sources()),
            matrix=matrix,
            alive=self._alive[:n].copy() if self._dead else None,
            rows=tuple(self._rows),
            mtimes=self._mtimes(),
            keyword=self._keyword,
            by_source=dict(self._by_source),
            layout=self._layout,
            ann=self._ann,
        )
        self._snapshot = snap
        if self._ann is not None:
            self._ann.offer(snap)
        return snap

    def _entry(self, r: _Row) -> Entry:
        vector = self._vecs[r.row]
        vector.flags.writeable = False
        return Entry(
            r.id, r.content, r.source, r.page, r.chunk, r.hash, vector, r.timestamp, r.extra,
            section=r.section, title=r.title,
        )  # fmt: skip

    # ----- changing -----

    def replace_source(self, source: str, entries: Sequence[NewEntry], state: FileState) -> None:
        """Make ``entries`` the chunks of ``source`` and record its stat signature.

        A chunk identical to the stored one (position, text, page, section, title, vector,
        timestamp) keeps its bytes in the file, so re-indexing an unchanged file costs nothing
        at save.
        """
        self._check_writable()
        vectors = [self._checked_vector(source, e) for e in entries]
        if len({e.chunk for e in entries}) != len(entries):
            raise ValueError(f"{source}: two new entries have the same chunk position")
        old_rows = self._by_source.get(source, [])
        old_by_chunk = {r.chunk: r for r in old_rows}
        kept: set[int] = set()
        rows: list[_Row] = []
        self._reserve(len(entries))
        for e, vec in zip(entries, vectors, strict=True):
            old = old_by_chunk.get(e.chunk)
            if old is not None and self._same(old, source, e, vec):
                kept.add(id(old))
                rows.append(old)
            else:
                rows.append(self._append(source, e, vec))
        changed = len(kept) != len(entries)
        for r in old_rows:
            if id(r) not in kept:
                self._kill(r)
                changed = True
        rows.sort(key=lambda r: r.chunk)
        if rows:
            self._by_source[source] = rows
        else:
            self._by_source.pop(source, None)
        if self._header.files.get(source) != state:
            self._header.files[source] = state
            changed = True
        self._dirty |= changed
        if changed:
            self._version += 1
            if self._keyword is not None:
                self._keyword.replace(source, rows, state.mtime_ns)

    def remove_source(self, source: str) -> None:
        """Forget ``source``: its entries and its stat signature."""
        self._check_writable()
        rows = self._by_source.pop(source, [])
        for r in rows:
            self._kill(r)
        had_file = self._header.files.pop(source, None) is not None
        self._dirty |= bool(rows) or had_file
        if rows or had_file:
            self._version += 1
            if self._keyword is not None:
                self._keyword.remove(source)

    def rename_source(self, old: str, new: str, state: FileState) -> bool:
        """Move ``old``'s entries to ``new`` (new ids, same vectors and timestamps).

        Whatever ``new`` held is replaced. Returns False, changing nothing, when ``old`` is
        unknown; the caller then indexes ``new`` as a new file.
        """
        self._check_writable()
        if old not in self._by_source and old not in self._header.files:
            return False
        if old == new:
            self._dirty |= self._header.files.get(new) != state
            self._header.files[new] = state
            return True
        self.remove_source(new)
        # New records rather than edits: a snapshot holding the old ones must not see a half-renamed file.
        rows = [self._renamed(r, new) for r in self._by_source.pop(old, [])]
        if rows:
            self._by_source[new] = rows
        self._header.files.pop(old, None)
        self._header.files[new] = state
        self._dirty = True
        self._version += 1
        if self._keyword is not None:
            self._keyword.rename(old, new, rows, state.mtime_ns)
        return True

    def _renamed(self, r: _Row, source: str) -> _Row:
        moved = replace(r, source=source, id=entry_id(source, r.chunk))
        self._rows[r.row] = moved
        same = self._by_hash[r.hash]
        same[same.index(r)] = moved  # _Row compares by identity (eq=False)
        self._spans[r.row, 0] = -1
        return moved

    def _check_writable(self) -> None:
        if self._readonly:
            raise StoreError(f"store {self._path} was opened read-only")
        if self._closed:
            raise StoreError(f"store {self._path} is closed")

    def _checked_vector(self, source: str, e: NewEntry) -> FloatMatrix:
        vec = np.asarray(e.vector, dtype=np.float32)
        if vec.shape != (self.dimensions,):
            raise ValueError(
                f"{source} chunk {e.chunk}: vector shape {vec.shape}, expected ({self.dimensions},)"
            )
        if not np.isfinite(vec).all():
            raise ValueError(f"{source} chunk {e.chunk}: vector holds NaN or infinity")
        if isinstance(e.chunk, bool) or not isinstance(e.chunk, int) or e.chunk < 0:
            raise ValueError(f"{source}: chunk position {e.chunk!r} is not a non-negative integer")
        try:
            e.content.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"{source} chunk {e.chunk}: text is not valid Unicode ({exc.reason})") from exc
        return vec

    def _same(self, r: _Row, source: str, e: NewEntry, vec: FloatMatrix) -> bool:
        return (
            r.hash == e.hash
            and r.page == e.page
            and r.section == e.section
            and r.title == e.title
            and r.timestamp == e.timestamp
            and r.extra is None
            and r.content == e.content
            and r.id == entry_id(source, e.chunk)
            and self._vecs[r.row].tobytes() == vec.tobytes()  # bit for bit: -0.0 is not 0.0
        )

    def _reserve(self, extra: int) -> None:
        need = len(self._rows) + extra
        if need > len(self._vecs):
            capacity = max(need, len(self._vecs) * 5 // 4 + 64)
            grown = np.empty((capacity, self.dimensions), dtype=np.float32)
            grown[: len(self._rows)] = self._vecs[: len(self._rows)]
            self._vecs = grown
            spans = np.empty((capacity, 2), dtype=np.int64)
            spans[: len(self._rows)] = self._spans[: len(self._rows)]
            self._spans = spans
            alive = np.empty(capacity, dtype=np.bool_)
            alive[: len(self._rows)] = self._alive[: len(self._rows)]
            self._alive = alive
            self._vecs_shared = False

    def _append(self, source: str, e: NewEntry, vec: FloatMatrix) -> _Row:
        row = len(self._rows)
        self._vecs[row] = vec
        self._spans[row] = (-1, 0)
        self._alive[row] = True
        r = _Row(
            entry_id(source, e.chunk),
            e.content,
            source,
            e.page,
            e.chunk,
            e.hash,
            e.timestamp,
            None,
            row,
            e.section,
            e.title,
        )
        self._rows.append(r)
        self._by_hash.setdefault(r.hash, []).append(r)
        return r

    def _kill(self, r: _Row) -> None:
        r.alive = False
        self._alive[r.row] = False
        self._dead += 1
        same = self._by_hash[r.hash]
        same.remove(r)
        if not same:
            del self._by_hash[r.hash]

    def _compact(self) -> None:
        """Drop dead rows, moving vectors down so matrix rows match file order.

        In place, unless a snapshot holds a view of the matrix: then the live rows are copied
        into a new one and the snapshot keeps the old, untouched.
        """
        if not self._dead:
            return
        if self._ann is not None:
            self._ann.compacted(self._layout, self._alive[: len(self._rows)])
        self._layout += 1
        target = self._vecs
        if self._vecs_shared:
            target = np.empty_like(self._vecs)
        live: list[_Row] = []
        run_src = run_dst = run_len = 0
        for r in self._rows:
            if not r.alive:
                continue
            if run_len and r.row == run_src + run_len:
                run_len += 1
            else:
                self._move(run_src, run_dst, run_len, target)
                run_src, run_dst, run_len = r.row, len(live), 1
            r.row = len(live)
            live.append(r)
        self._move(run_src, run_dst, run_len, target)
        self._rows = live
        self._dead = 0
        self._alive[: len(live)] = True
        if target is not self._vecs:
            self._vecs = target
            self._vecs_shared = False
            # A new snapshot lets the old matrix go as soon as the last reader drops it.
            self._version += 1

    def _move(self, src: int, dst: int, n: int, vecs: FloatMatrix) -> None:
        """Move rows [src, src+n) of the matrix (into ``vecs``) and of the spans down to dst."""
        if not n or (src == dst and vecs is self._vecs):
            return
        # On 1-D views numpy copies overlapping ranges like memmove, without a temporary.
        for source, array in ((self._vecs, vecs), (self._spans, self._spans)):
            width = array.shape[1]
            flat = array.reshape(-1)
            flat[dst * width : (dst + n) * width] = source.reshape(-1)[src * width : (src + n) * width]

    # ----- saving -----

    def save(self) -> SaveStats:
        """Write the store durably if it changed; a no-op otherwise.

        Raises StoreError when the file cannot be written (disk full, I/O error, read-only
        folder); the previous file is then intact and the store stays dirty for a retry.
        """
        self._check_writable()
        if not self._dirty:
            return SaveStats(False, self.count, 0, 0, 0, 0, 0.0, 0.0)
        start = time.perf_counter()
        with _gc_paused():
            self._compact()
            n = len(self._rows)
            header = replace(self._header, updated=utc_now_iso())
            head = encode_header(header, n) + NEWLINE
            try:
                with AtomicWriter(self._path) as w:
                    spans, reused = self._write_entries(w, head)
                    st = w.commit()
            except OSError as exc:
                if exc.errno == errno.EIO:
                    # The copy may have failed reading the old file (a bad block): the retry must
                    # not depend on it, so it serialises every entry from memory instead.
                    self._drop_source()
                raise StoreError(
                    f"cannot save the store {self._path}: {exc.strerror or exc}; the previous version is "
                    "intact and the changes stay in memory for the next save"
                ) from exc
            durable = time.perf_counter() - start
            self._header = header
            self._dirty = False
            self._switch_source(st, spans)
            if self._src_fd is not None:
                write_cache(self._path, JsonSignature.of(self._src_fd, st, head), self._columns(spans))
        stats = SaveStats(
            True, n, n - reused, reused, w.bytes_written, w.bytes_copied, durable, time.perf_counter() - start
        )
        log.debug(
            "store_saved", path=str(self._path), **{k: v for k, v in stats.__dict__.items() if k != "saved"}
        )
        return stats

    def _write_entries(self, w: AtomicWriter, head: bytes) -> tuple[SpanArray, int]:
        """Write every entry to ``w``, splicing runs of unchanged ones from the current file."""
        spans = self._spans[: len(self._rows)] if self._src_fd is not None else None
        return write_spliced(w, head, self._rows, self._vecs, old=spans, src_fd=self._src_fd)

    def _drop_source(self) -> None:
        """Stop splicing from the current file: the next save writes every entry anew."""
        if self._src_fd is not None:
            os.close(self._src_fd)
            self._src_fd = None
        self._spans[:, 0] = -1

    def _switch_source(self, st: os.stat_result, spans: SpanArray) -> None:
        """Point the entries' spans at the file just written."""
        if self._src_fd is not None:
            os.close(self._src_fd)
            self._src_fd = None
        fd = -1
        with contextlib.suppress(OSError):
            fd = os.open(self._path, os.O_RDONLY)
        if fd >= 0 and os.fstat(fd).st_ino == st.st_ino:
            self._src_fd = fd
            self._spans[: len(spans)] = spans
            return
        # Without the new file open its spans are useless: the next save serialises everything.
        if fd >= 0:
            os.close(fd)
        self._spans[:, 0] = -1

    def _columns(self, spans: SpanArray) -> Columns:
        rows = self._rows
        return Columns(
            ids=[r.id for r in rows],
            contents=[r.content for r in rows],
            sources=[r.source for r in rows],
            pages=[r.page for r in rows],
            chunks=[r.chunk for r in rows],
            hashes=[r.hash for r in rows],
            timestamps=[r.timestamp for r in rows],
            extras=[r.extra for r in rows],
            sections=[r.section for r in rows],
            titles=[r.title for r in rows],
            matrix=self._vecs[: len(rows)],
            spans=spans,
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC while building or walking 100,000s of objects.

    Each collection would walk every entry already held; a bulk load triggers dozens and
    more than doubles its time. Nothing built here is cyclic garbage.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
