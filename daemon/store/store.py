"""The JSON embedding store: entries in memory, vectors in one float32 matrix, durable changes.

The format is in ``daemon.store.format``, reading it in ``load`` (and ``opening``, for the
writer), the row table in ``rows``, the journal, saves and folds in ``durable``, ``journal``
and ``fold``. A Store is not thread-safe: one thread owns it (the worker, under the store
lock). Searches on other threads read a ``Snapshot`` (``daemon.store.snapshot``), which the
store never changes under them (rows are appended past its end, a compaction copies once a
snapshot has seen the matrix, a rename replaces row records rather than editing them).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import structlog

from daemon.errors import StoreError
from daemon.store.ann import MIN_ROWS, VectorIndex
from daemon.store.durable import Durability, open_journal_file
from daemon.store.entries import Entry, NewEntry, SaveStats, StoredChunk
from daemon.store.fold import FoldPlan, write_fold
from daemon.store.format import (
    Columns,
    FileState,
    Fingerprint,
    FloatMatrix,
    Header,
)
from daemon.store.io import FREEZE_ABOVE_ROWS, StoreLock, gc_paused
from daemon.store.journal import (
    REMOVE,
    RENAME,
    REPLACE,
    Change,
)
from daemon.store.keyword import KeywordIndex, Progress, kw_path
from daemon.store.lazy import LazyGroups, LazyRows
from daemon.store.load import load
from daemon.store.opening import open_for_writing
from daemon.store.rows import RowRecord, RowTable, by_source
from daemon.store.signature import Presigned, recorded
from daemon.store.snapshot import Snapshot

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
        self._closed = False
        self.loaded_via = via
        """How the store was read: cache, parse, generic, new, corrupt or rebuild."""
        self._t = RowTable(header.dimensions)
        # A read-only store makes records and groups as they are read (``daemon.store.lazy``).
        self._by_source: MutableMapping[str, list[RowRecord]] = {}
        # Bumped by every change a reader could see; a snapshot of the same version is reused.
        self._version = 0
        self._snapshot: Snapshot | None = None
        # The keyword index (``daemon.store.keyword``) told of every change; None when off.
        self._keyword: KeywordIndex | None = None
        # What is on disk and what is only in memory: the journal, folds, the JSON file.
        self._d = Durability(path, header)
        # The approximate vector index (``daemon.store.ann``) of a writable store; None when off.
        # It numbers rows by layout: the row table's compactions, which move rows down.
        self._ann: VectorIndex | None = None
        if cols is not None and readonly:
            rows = LazyRows(cols)
            self._t.adopt(cols, rows)
            self._by_source = LazyGroups(rows)
        elif cols is not None:
            self._t.adopt(cols)
            self._by_source = by_source(self._t.rows)
        # For the keyword index's check at open: signatures the cache recorded, sources replayed since.
        self._recorded = recorded(cols) if cols is not None and not readonly else {}
        self._replayed: set[str] = set()

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
            with gc_paused() as pause:
                store = cls._open_locked(path, model, dimensions, fingerprint, rebuild)
                try:
                    store._d.open_journal(store.loaded_via, dimensions, store._apply)
                except BaseException:
                    store.close()
                    raise
                pause.freeze = store.count >= FREEZE_ABOVE_ROWS
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
        sources = Presigned(self._by_source, self._recorded, self._replayed)
        self._recorded = {}
        try:
            self._keyword = KeywordIndex.open(path, sources, self._mtimes(), progress=progress)
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
        index, note = KeywordIndex.for_reading(kw_path(self._path), self._by_source, self._mtimes())
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
        opened = open_for_writing(path, model, dimensions, fingerprint, rebuild)
        store = cls(path, opened.header, opened.cols, readonly=False, via=opened.via)
        store._d.src_fd, store._d.json_size = opened.fd, opened.json_size
        if opened.rewrite:
            store._d.rewrite_next()
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open ``path`` for reading only: no lock, never writes, never blocks the daemon.

        Raises StoreError when there is no store, StoreCorruptError when it is not valid.
        """
        path = Path(path)
        with contextlib.ExitStack() as stack, gc_paused() as pause:
            # The journal first: a fold renames the new JSON in place before it cuts the
            # journal, so the JSON read next is at least as new as the journal we hold.
            journal = open_journal_file(path)
            if journal is not None:
                stack.enter_context(journal)
            try:
                loaded = load(path, 0, keep_fd=False)
            except FileNotFoundError:
                raise StoreError(f"no store at {path}: the daemon has not written one yet") from None
            except OSError as exc:
                raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
            store = cls(path, loaded.header, loaded.cols, readonly=True, via=loaded.via)
            if journal is not None and store.dimensions > 0:
                store._d.replay(journal, store.dimensions, store._apply, reader=True)
            pause.freeze = store.count >= FREEZE_ABOVE_ROWS
            return store

    def close(self) -> None:
        """Release the lock and the file handle; does not save. Idempotent."""
        if self._keyword is not None:
            self._keyword.close()
        if self._ann is not None:
            self._ann.close()
            self._ann = None
        self._d.close()
        self._t.close()
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
        return self._t.count

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
        """ISO 8601 time of the last durable change (in the journal or the JSON file)."""
        return self._d.updated

    @property
    def declared_count(self) -> int:
        """The ``count`` the file declared when read (0 when it declares none); ``count`` is the truth."""
        return self._header.count

    @property
    def dirty(self) -> bool:
        """True while a change is only in memory (not yet in the journal or the JSON file)."""
        return self._d.dirty

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
        r = self._t.hashes.get(hash_)
        if r is None:
            return None
        return self._t.vecs[r.row].copy(), r.timestamp

    def matrix(self) -> FloatMatrix:
        """The (count, dimensions) float32 vectors, row i being ``entry(i)``; read-only view.

        The view is valid until the store next changes.
        """
        self._compact()
        view = self._t.vecs[: len(self._t.rows)]
        view.flags.writeable = False
        return view

    def entry(self, row: int) -> Entry:
        """The entry at row ``row`` of ``matrix()``."""
        self._compact()
        return self._entry(self._t.rows[row])

    def iter_entries(self) -> Iterator[Entry]:
        """Every entry in file order (the order of ``matrix()`` rows); do not change the store meanwhile."""
        self._compact()
        for r in self._t.rows:
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
        t = self._t
        n = len(t.rows)
        matrix = t.vecs[:n]
        matrix.flags.writeable = False
        t.vecs_shared = True
        snap = Snapshot(
            path=self._path,
            version=self._version,
            model=self._header.model,
            dimensions=self._header.dimensions,
            fingerprint=self._header.fingerprint,
            files=len(self.sources()),
            matrix=matrix,
            alive=t.alive[:n].copy() if t.dead else None,
            # A read-only store never changes after its open: its lazy rows need no copy.
            rows=t.rows if self._readonly else tuple(t.rows),
            mtimes=self._mtimes(),
            keyword=self._keyword,
            by_source=self._by_source if self._readonly else dict(self._by_source),
            layout=self._t.compactions,
            ann=self._ann,
        )
        self._snapshot = snap
        if self._ann is not None:
            self._ann.offer(snap)
        return snap

    def _compact(self) -> None:
        t = self._t
        if t.dead and self._ann is not None:
            self._ann.compacted(t.compactions, t.alive[: len(t.rows)])
        if t.compact():
            self._version += 1  # a new snapshot lets the old matrix go

    def _entry(self, r: RowRecord) -> Entry:
        vector = self._t.vecs[r.row]
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
        if self._replace(source, entries, vectors, state):
            self._record(Change(0, REPLACE, source, "", state, None, entries), vectors)

    def _replace(
        self, source: str, entries: Sequence[NewEntry], vectors: Sequence[FloatMatrix], state: FileState
    ) -> bool:
        t = self._t
        old_rows = self._by_source.get(source, [])
        old_by_chunk = {r.chunk: r for r in old_rows}
        kept: set[int] = set()
        rows: list[RowRecord] = []
        t.reserve(len(entries))
        for e, vec in zip(entries, vectors, strict=True):
            old = old_by_chunk.get(e.chunk)
            if old is not None and t.same(old, source, e, vec):
                kept.add(id(old))
                rows.append(old)
            else:
                rows.append(t.append(source, e, vec))
        changed = len(kept) != len(entries)
        for r in old_rows:
            if id(r) not in kept:
                t.kill(r)
                changed = True
        rows.sort(key=lambda r: r.chunk)
        if rows:
            self._by_source[source] = rows
        else:
            self._by_source.pop(source, None)
        if self._header.files.get(source) != state:
            self._header.files[source] = state
            changed = True
        if changed:
            self._version += 1
            if self._keyword is not None:
                self._keyword.replace(source, rows, state.mtime_ns)
        return changed

    def remove_source(self, source: str) -> None:
        """Forget ``source``: its entries and its stat signature."""
        self._check_writable()
        if self._remove(source):
            self._record(Change(0, REMOVE, source, ""))

    def _remove(self, source: str) -> bool:
        rows = self._by_source.pop(source, [])
        for r in rows:
            self._t.kill(r)
        had_file = self._header.files.pop(source, None) is not None
        if rows or had_file:
            self._version += 1
            if self._keyword is not None:
                self._keyword.remove(source)
        return bool(rows) or had_file

    def rename_source(self, old: str, new: str, state: FileState) -> bool:
        """Move ``old``'s entries to ``new`` (new ids, same vectors and timestamps).

        Whatever ``new`` held is replaced. Returns False, changing nothing, when ``old`` is
        unknown; the caller then indexes ``new`` as a new file.
        """
        self._check_writable()
        if old not in self._by_source and old not in self._header.files:
            return False
        if self._rename(old, new, state):
            self._record(Change(0, RENAME, old, "", state, new))
        return True

    def _rename(self, old: str, new: str, state: FileState) -> bool:
        if old == new:
            changed = self._header.files.get(new) != state
            self._header.files[new] = state
            return changed
        self._remove(new)
        # New records rather than edits: a snapshot holding the old ones must not see a half-renamed file.
        rows = [self._t.renamed(r, new) for r in self._by_source.pop(old, [])]
        if rows:
            self._by_source[new] = rows
        self._header.files.pop(old, None)
        self._header.files[new] = state
        self._version += 1
        if self._keyword is not None:
            self._keyword.rename(old, new, rows, state.mtime_ns)
        return True

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

    # ----- the journal and saving (``daemon.store.durable``) -----

    def _record(self, change: Change, vectors: Sequence[FloatMatrix] = ()) -> None:
        self._d.record(change, vectors)

    def _apply(self, change: Change) -> None:
        """Apply a replayed record: the same calls as when it was made (keyword index included)."""
        self._replayed.update(s for s in (change.source, change.new) if s is not None)
        if change.kind == REPLACE and change.state is not None:
            vectors = [np.asarray(e.vector, dtype=np.float32) for e in change.entries]
            self._replace(change.source, change.entries, vectors, change.state)
        elif change.kind == REMOVE:
            self._remove(change.source)
        elif (
            change.kind == RENAME
            and change.state is not None
            and change.new is not None
            and (change.source in self._by_source or change.source in self._header.files)
        ):
            self._rename(change.source, change.new, change.state)

    @property
    def journal_bytes(self) -> int:
        """Bytes of durable changes in the journal (the JSON file may hold some already)."""
        return self._d.journal_bytes

    @property
    def json_bytes(self) -> int:
        """Size of the JSON file as last written or read."""
        return self._d.json_size

    @property
    def unfolded(self) -> bool:
        """True while the JSON file lags behind the state in memory or in the journal."""
        return self._d.unfolded

    def save(self) -> SaveStats:
        """Make every change durable; a no-op when there is none.

        A store of at least ``journal_above_bytes()`` appends the changes to its journal (one
        write and one fsync, whatever the store's size); a smaller one, or one whose file must
        be rewritten anyway, is folded: the JSON is rewritten as a whole. Raises StoreError when
        the disk refuses (full, I/O error, read-only folder); what was durable stays so, and
        the changes stay in memory for a retry.
        """
        self._check_writable()
        if not self._d.dirty:
            return SaveStats(False, self.count, 0, 0, 0, 0, 0.0, 0.0)
        if self._d.full_next:
            return self.fold()
        return self._d.append(self.count)

    def fold(self) -> SaveStats:
        """Rewrite the JSON store (and its cache) from the state in memory, then cut the journal.

        Synchronous: ``begin_fold``, ``write_fold`` and ``finish_fold`` in one. Raises StoreError
        like ``save``.
        """
        plan = self.begin_fold()
        try:
            write_fold(plan, cache=True)
        except StoreError:
            self.fold_failed(plan)
            raise
        return self.finish_fold(plan)

    def begin_fold(self) -> FoldPlan:
        """Capture the state for a fold (under the store's lock); write it with ``write_fold``.

        Then call ``finish_fold`` or, when the write failed, ``fold_failed``; one fold at a time.
        """
        self._check_writable()
        with gc_paused():
            self._compact()
            return self._d.plan(self._t)

    def fold_failed(self, plan: FoldPlan) -> None:
        """A fold's write failed: release it (under the store's lock); the store stays as it was."""
        self._d.failed(plan, self._t)

    def finish_fold(self, plan: FoldPlan) -> SaveStats:
        """Adopt a written fold (under the store's lock): splice from the new file, cut the journal."""
        return self._d.finish(plan, self._t)
