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
import gc
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import structlog

from daemon.errors import FingerprintMismatchError, StoreCorruptError, StoreError
from daemon.store.cache import cache_path, remove_cache, write_cache
from daemon.store.entries import Entry, NewEntry, SaveStats, StoredChunk
from daemon.store.fold import FoldPlan, write_fold
from daemon.store.format import (
    NEWLINE,
    Columns,
    FileState,
    Fingerprint,
    FloatMatrix,
    Header,
    encode_header,
    parse_header_line,
    utc_now_iso,
)
from daemon.store.io import StoreLock, move_aside, remove_stale_temps
from daemon.store.journal import (
    REMOVE,
    RENAME,
    REPLACE,
    Change,
    Journal,
    Scan,
    encode,
    journal_path,
    log_dropped,
    read_changes,
)
from daemon.store.keyword import KeywordIndex, Progress, kw_path
from daemon.store.load import Loaded, check_compatible, load
from daemon.store.rows import RowRecord, RowTable
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

# Below this size of JSON a save rewrites the whole file, as before the journal: that is
# then about as fast as a journal append (measured in bench/store_scale.py, docs/benchmarks.md),
# and the JSON file is never behind. EMBEDD_JOURNAL_ABOVE_BYTES overrides it (0: always journal).
JOURNAL_ABOVE_BYTES = 64 << 20


def journal_above_bytes() -> int:
    """The size of JSON from which changes go to the journal (``JOURNAL_ABOVE_BYTES`` or the environment)."""
    raw = os.environ.get("EMBEDD_JOURNAL_ABOVE_BYTES", "")
    return int(raw) if raw.isdigit() else JOURNAL_ABOVE_BYTES


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
        self._closed = False
        self.loaded_via = via
        """How the store was read: cache, parse, generic, new, corrupt or rebuild."""
        self._t = RowTable(header.dimensions)
        self._by_source: dict[str, list[RowRecord]] = {}
        # Bumped by every change a reader could see; a snapshot of the same version is reused.
        self._version = 0
        self._snapshot: Snapshot | None = None
        # The keyword index (``daemon.store.keyword``) told of every change; None when off.
        self._keyword: KeywordIndex | None = None
        # Changes applied, and how many of them are durable (in the journal or the JSON).
        self._changes = 0
        self._durable = 0
        # The next save must rewrite the JSON: it was never written in our layout, or a change
        # was made while the store was too small to journal.
        self._full_next = False
        # The journal (``daemon.store.journal``): the last record's number, the records not yet
        # written, the writer's file (opened at the first append when there was none).
        self._seq = header.journal_seq
        self._pending: list[tuple[int, bytes]] = []
        self._journal: Journal | None = None
        self._journal_above = journal_above_bytes()
        self._json_size = 0
        self._updated = self._last_at = header.updated
        self._folding = False  # a fold plan is out (being written on another thread)
        if cols is not None:
            self._t.adopt(cols)
            for r in self._t.rows:
                self._by_source.setdefault(r.source, []).append(r)
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
    ) -> Store:
        """Open ``path`` for writing, holding its lock until ``close``.

        A missing store starts empty; a corrupt one is moved aside to ``<name>.corrupt-<UTC>``
        and an empty one started. Raises StoreLockedError when another process holds the
        lock, and FingerprintMismatchError when the store was built with another model,
        width or chunking; with ``rebuild`` such a store is instead moved aside to
        ``<name>.bak-<UTC>`` and an empty one started, so everything is embedded again. A
        store that matches is opened as it is, ``rebuild`` or not.
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
                try:
                    store._open_journal()
                except BaseException:
                    store.close()
                    raise
            if keyword:
                store._open_keyword(keyword_progress)
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
        remove_stale_temps(path, cache_path(path), journal_path(path))
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

    def _open_journal(self) -> None:
        """Replay the journal over the JSON just read, and keep it open for appends."""
        path = journal_path(self._path)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the replay
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read the journal {path}: {exc.strerror or exc}") from exc
        try:
            if self.loaded_via in ("new", "corrupt", "rebuild"):
                # It belongs to a JSON that is gone or was moved aside: keep it beside that one.
                f.close()
                moved = move_aside(path, "orphan")
                log.warning(
                    "store_journal_orphaned", path=str(path), moved_to=str(moved), reason=self.loaded_via
                )
                return
            with f:
                scan, starts, follows = self._replay(f, path)
            if not follows:
                moved = move_aside(path, "mismatch")
                log.warning("store_journal_moved_aside", path=str(path), moved_to=str(moved))
                return
            self._journal = Journal.open(path, starts, scan.end, foreign=scan.foreign)
            if starts and starts[0][0] <= self._header.journal_seq:
                # A crash came between a fold's rename and the journal's cut: finish the cut.
                self._journal.cut_through(self._header.journal_seq)
        except OSError as exc:
            raise StoreError(f"cannot open the journal {path}: {exc.strerror or exc}") from exc

    @classmethod
    def _fresh(cls, path: Path, header: Header, via: str) -> Store:
        store = cls(path, header, None, readonly=False, via=via)
        store._full_next = True
        store._changes = 1
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
        if adopted or loaded.fd is None:
            store._full_next = True
            store._changes = 1
        store._json_size = os.fstat(loaded.fd).st_size if loaded.fd is not None else path.stat().st_size
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
        with contextlib.ExitStack() as stack, _gc_paused():
            try:
                # The journal first: a fold renames the new JSON in place before it cuts the
                # journal, so the JSON read next is at least as new as the journal we hold.
                journal: BinaryIO | None = stack.enter_context(open(journal_path(path), "rb"))
            except FileNotFoundError:
                journal = None
            except OSError as exc:
                raise StoreError(
                    f"cannot read the journal {journal_path(path)}: {exc.strerror or exc}"
                ) from exc
            try:
                loaded = load(path, 0, keep_fd=False)
            except FileNotFoundError:
                raise StoreError(f"no store at {path}: the daemon has not written one yet") from None
            except OSError as exc:
                raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
            store = cls(path, loaded.header, loaded.cols, readonly=True, via=loaded.via)
            if journal is not None and store.dimensions > 0:
                try:
                    store._replay(journal, journal_path(path))
                except OSError as exc:
                    raise StoreError(
                        f"cannot read the journal {journal_path(path)}: {exc.strerror or exc}"
                    ) from exc
            return store

    def close(self) -> None:
        """Release the lock and the file handle; does not save. Idempotent."""
        if self._keyword is not None:
            self._keyword.close()
        if self._src_fd is not None:
            os.close(self._src_fd)
            self._src_fd = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
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
        return self._updated

    @property
    def declared_count(self) -> int:
        """The ``count`` the file declared when read (0 when it declares none); ``count`` is the truth."""
        return self._header.count

    @property
    def dirty(self) -> bool:
        """True while a change is only in memory (not yet in the journal or the JSON file)."""
        return self._changes != self._durable

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
        rows = self._t.by_hash.get(hash_)
        if not rows:
            return None
        r = rows[0]
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
            rows=tuple(t.rows),
            mtimes=self._mtimes(),
            keyword=self._keyword,
        )
        self._snapshot = snap
        return snap

    def _compact(self) -> None:
        if self._t.compact():
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

    # ----- the journal -----

    def _record(self, change: Change, vectors: Sequence[FloatMatrix] = ()) -> None:
        """A change was applied: journal it when the store journals, else the next save rewrites."""
        self._changes += 1
        if self._full_next or self._json_size < self._journal_above:
            self._full_next = True  # this change is only in memory: the next save must be a fold
            return
        self._seq += 1
        self._last_at = utc_now_iso()
        self._pending.append((self._seq, encode(replace(change, seq=self._seq, at=self._last_at), vectors)))

    def _replay(self, f: BinaryIO, path: Path) -> tuple[Scan, list[tuple[int, int]], bool]:
        """Apply the journal's records the JSON does not hold yet, in order.

        Returns how the scan ended, the (seq, offset) of every whole record, and whether the
        records follow the JSON (False: they belong to another version of it, and none was applied).
        """
        scan = Scan()
        starts: list[tuple[int, int]] = []
        folded = self._header.journal_seq
        applied = 0
        follows = True
        for change, pos in read_changes(f, self.dimensions, scan):
            starts.append((change.seq, pos))
            if change.seq <= self._seq or not follows:
                continue  # already in the JSON (a crash between a fold's rename and the journal's cut)
            if change.seq != self._seq + 1:
                log.error(
                    "store_journal_mismatch",
                    path=str(path),
                    json_seq=folded,
                    record_seq=change.seq,
                    detail="the journal does not follow this version of the store (restored from a backup?); "
                    "the store is used as it is and files that differ are indexed again",
                )
                follows = False
                continue
            self._apply(change)
            self._seq = change.seq
            self._updated = change.at
            applied += 1
        log_dropped(path, scan)
        if applied:
            log.info(
                "store_journal_replayed", path=str(path), records=applied, json_seq=folded, seq=self._seq
            )
        return scan, starts, follows

    def _apply(self, change: Change) -> None:
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
        """Bytes of durable changes in the journal that the JSON file does not hold yet."""
        return self._journal.size if self._journal is not None else 0

    @property
    def json_bytes(self) -> int:
        """Size of the JSON file as last written or read."""
        return self._json_size

    @property
    def unfolded(self) -> bool:
        """True while the JSON file lags behind the durable state (changes only in the journal)."""
        return self._seq > self._header.journal_seq or self._full_next or self.dirty

    # ----- saving -----

    def save(self) -> SaveStats:
        """Make every change durable; a no-op when there is none.

        A store of at least ``journal_above`` bytes appends the changes to its journal (one
        write and one fsync, whatever the store's size); a smaller one, or one whose file must
        be rewritten anyway, is folded: the JSON is rewritten as a whole. Raises StoreError when
        the disk refuses (full, I/O error, read-only folder); what was durable stays so, and
        the changes stay in memory for a retry.
        """
        self._check_writable()
        if not self.dirty:
            return SaveStats(False, self.count, 0, 0, 0, 0, 0.0, 0.0)
        if self._full_next:
            return self.fold()
        start = time.perf_counter()
        try:
            written = self._append_pending()
        except OSError as exc:
            raise StoreError(
                f"cannot write the journal {journal_path(self._path)}: {exc.strerror or exc}; what was "
                "durable is intact and the changes stay in memory for the next save"
            ) from exc
        took = time.perf_counter() - start
        stats = SaveStats(True, self.count, 0, 0, written, 0, took, took, journalled=True)
        log.debug("store_journalled", path=str(self._path), bytes=written, seconds=round(took, 4))
        return stats

    def _append_pending(self) -> int:
        if self._journal is None:
            self._journal = Journal.open(journal_path(self._path), [], 0, foreign=False)
        written = self._journal.append(self._pending)
        self._pending.clear()
        self._durable = self._changes
        self._updated = self._last_at
        return written

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
        if self._folding:
            raise StoreError(f"a fold of {self._path} is already in progress")
        with _gc_paused():
            if self._t.compact():
                self._version += 1  # a new snapshot lets the old matrix go
            t = self._t
            n = len(t.rows)
            t.vecs_shared = True  # the plan holds a view: later compactions copy
            header = replace(self._header, updated=utc_now_iso(), journal_seq=self._seq)
            plan = FoldPlan(
                path=self._path,
                head=encode_header(header, n) + NEWLINE,
                rows=tuple(t.rows),
                matrix=t.vecs[:n],
                spans=t.spans[:n].copy() if self._src_fd is not None else None,
                src_fd=os.dup(self._src_fd) if self._src_fd is not None else None,
                seq=self._seq,
                changes=self._changes,
                compactions=t.compactions,
            )
        self._folding = True
        return plan

    def fold_failed(self, plan: FoldPlan) -> None:
        """A fold's write failed: release it (under the store's lock); the store stays as it was."""
        self._folding = False
        plan.close()
        if plan.eio:
            self._drop_source()

    def finish_fold(self, plan: FoldPlan) -> SaveStats:
        """Adopt a written fold (under the store's lock): splice from the new file, cut the journal."""
        assert plan.stats is not None and plan.stat is not None and plan.new_spans is not None
        self._folding = False
        plan.close_src()
        self._header.updated = self._updated = _updated_of(plan.head)
        self._header.journal_seq = plan.seq
        self._json_size = plan.stat.st_size
        self._durable = max(self._durable, plan.changes)
        if self._changes == plan.changes:
            self._full_next = False
        self._pending = [(seq, rec) for seq, rec in self._pending if seq > plan.seq]
        self._switch_source(plan)
        if self._journal is not None and self._journal.records:
            try:
                self._journal.cut_through(plan.seq)
            except OSError as exc:
                # Harmless: records the JSON holds are skipped at open; the next fold cuts them.
                log.warning("store_journal_cut_failed", path=str(self._journal.path), reason=str(exc))
        stats = replace(plan.stats, seconds=time.perf_counter() - plan.started)
        log.debug(
            "store_saved", path=str(self._path), **{k: v for k, v in stats.__dict__.items() if k != "saved"}
        )
        return stats

    def _drop_source(self) -> None:
        """Stop splicing from the current file: the next fold writes every entry anew."""
        if self._src_fd is not None:
            os.close(self._src_fd)
            self._src_fd = None
        self._t.spans[:, 0] = -1

    def _switch_source(self, plan: FoldPlan) -> None:
        """Point the entries' spans at the file just written (rows changed since the plan: -1)."""
        if self._src_fd is not None:
            os.close(self._src_fd)
            self._src_fd = None
        t = self._t
        t.spans[:, 0] = -1
        fd, plan.new_fd = plan.new_fd, None
        if fd is None or plan.new_spans is None:
            return  # without the new file open its spans are useless: the next fold serialises all
        self._src_fd = fd
        n = len(plan.rows)
        if t.compactions == plan.compactions:
            # Rows kept their positions: a row is in the new file as it is now unless it was
            # removed or renamed (a new record in its place) since the plan.
            same = np.fromiter(
                (a is b for a, b in zip(t.rows[:n], plan.rows, strict=True)), dtype=np.bool_, count=n
            )
            same &= t.alive[:n]
            t.spans[:n][same] = plan.new_spans[same]
            return
        now = {id(r): r.row for r in t.rows if r.alive}
        for i, r in enumerate(plan.rows):
            row = now.get(id(r))
            if row is not None:
                t.spans[row] = plan.new_spans[i]


def _updated_of(head: bytes) -> str:
    header = parse_header_line(head)
    return header.updated if header is not None else utc_now_iso()


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
