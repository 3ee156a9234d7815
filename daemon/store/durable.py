"""How the store's state in memory reaches the disk: journal appends, folds, and the JSON file
folds splice from.

A change is durable once it is in the journal (``daemon.store.journal``) or in the JSON file.
A store smaller than ``journal_above_bytes()`` skips the journal: each save rewrites its JSON
file (a fold), which is then about as cheap, and the file is never behind. A larger one appends
each change to the journal and folds later (``daemon.service.saver`` decides when).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import structlog

from daemon.errors import StoreError
from daemon.store.entries import SaveStats
from daemon.store.fold import FoldPlan
from daemon.store.format import NEWLINE, FloatMatrix, Header, encode_header, parse_header_line, utc_now_iso
from daemon.store.io import move_aside
from daemon.store.journal import Change, Journal, Scan, encode, journal_path, log_dropped, read_changes
from daemon.store.rows import RowTable

log = structlog.get_logger(__name__)

# Below this size of JSON a save rewrites the whole file, as before the journal, so the JSON file
# that other programs read is never behind. It costs little there: a full save grows with the
# file, 0.01 s at 2 MB, 0.08 s at 16 MB, 0.7 s at 543 MB, against 0.02 s for a journal append
# (bench/store_scale.py, docs/benchmarks.md). EMBEDD_JOURNAL_ABOVE_BYTES overrides it (0: always).
JOURNAL_ABOVE_BYTES = 64 << 20


def journal_above_bytes() -> int:
    """The JSON size from which changes go to the journal (``JOURNAL_ABOVE_BYTES`` or the environment)."""
    raw = os.environ.get("EMBEDD_JOURNAL_ABOVE_BYTES", "")
    return int(raw) if raw.isdigit() else JOURNAL_ABOVE_BYTES


def open_journal_file(store: Path) -> BinaryIO | None:
    """The journal of ``store`` open for reading, None when there is none."""
    path = journal_path(store)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the journal {path}: {exc.strerror or exc}") from exc


class Durability:
    """The durable side of one store: what is on disk, what is only in memory, and the journal."""

    def __init__(self, path: Path, header: Header, *, src_fd: int | None = None, json_size: int = 0) -> None:
        self.path = path
        self.header = header  # the store's own: a fold sets its updated and journal_seq
        # The JSON file as last read or written, open while the rows' spans refer to it.
        self.src_fd = src_fd
        self.json_size = json_size
        # Changes applied, and how many of them are durable (in the journal or the JSON).
        self.changes = 0
        self.durable = 0
        # The next save must rewrite the JSON: it was never written in our layout, or a change
        # was made while the store was too small to journal.
        self.full_next = False
        self.seq = header.journal_seq  # the last record's number
        self.pending: list[tuple[int, bytes]] = []  # records not yet written
        self.journal: Journal | None = None  # opened at the first append when there was none
        self.journal_above = journal_above_bytes()
        self.updated = self.last_at = header.updated
        self.folding = False  # a fold plan is out (being written on another thread)

    def rewrite_next(self) -> None:
        """The JSON file must be rewritten at the next save (new, foreign layout, adopted header)."""
        self.full_next = True
        self.changes += 1

    @property
    def dirty(self) -> bool:
        """True while a change is only in memory."""
        return self.changes != self.durable

    @property
    def unfolded(self) -> bool:
        """True while the JSON file lags behind the state in memory or in the journal."""
        return self.seq > self.header.journal_seq or self.full_next or self.dirty

    @property
    def journal_bytes(self) -> int:
        """Bytes of records in the journal."""
        return self.journal.size if self.journal is not None else 0

    # ----- the journal -----

    def record(self, change: Change, vectors: Sequence[FloatMatrix] = ()) -> None:
        """A change was applied: journal it when the store journals, else the next save rewrites."""
        self.changes += 1
        if self.full_next or self.json_size < self.journal_above:
            self.full_next = True  # this change is only in memory: the next save must be a fold
            return
        self.seq += 1
        self.last_at = utc_now_iso()
        self.pending.append((self.seq, encode(replace(change, seq=self.seq, at=self.last_at), vectors)))

    def append(self, count: int) -> SaveStats:
        """Write the pending records to the journal and fsync; raises StoreError when the disk refuses."""
        start = time.perf_counter()
        try:
            if self.journal is None:
                self.journal = Journal.open(journal_path(self.path), [], 0, foreign=False)
            written = self.journal.append(self.pending)
        except OSError as exc:
            raise StoreError(
                f"cannot write the journal {journal_path(self.path)}: {exc.strerror or exc}; what was "
                "durable is intact and the changes stay in memory for the next save"
            ) from exc
        self.pending.clear()
        self.durable = self.changes
        self.updated = self.last_at
        took = time.perf_counter() - start
        log.debug("store_journalled", path=str(self.path), bytes=written, seconds=round(took, 4))
        return SaveStats(True, count, 0, 0, written, 0, took, took, journalled=True)

    def open_journal(self, via: str, dims: int, apply: Callable[[Change], None]) -> None:
        """For the writer: replay the journal over the JSON just read, and keep it for appends."""
        path = journal_path(self.path)
        f = open_journal_file(self.path)
        if f is None:
            return
        try:
            if via in ("new", "corrupt", "rebuild"):
                # It belongs to a JSON that is gone or was moved aside: keep it beside that one.
                f.close()
                moved = move_aside(path, "orphan")
                log.warning("store_journal_orphaned", path=str(path), moved_to=str(moved), reason=via)
                return
            with f:
                scan, starts, follows = self.replay(f, dims, apply)
            if not follows:
                moved = move_aside(path, "mismatch")
                log.warning("store_journal_moved_aside", path=str(path), moved_to=str(moved))
                return
            self.journal = Journal.open(path, starts, scan.end, foreign=scan.foreign)
            if starts and starts[0][0] <= self.header.journal_seq:
                # A crash came between a fold's rename and the journal's cut: finish the cut.
                self.journal.cut_through(self.header.journal_seq)
        except OSError as exc:
            raise StoreError(f"cannot open the journal {path}: {exc.strerror or exc}") from exc

    def replay(
        self, f: BinaryIO, dims: int, apply: Callable[[Change], None], *, reader: bool = False
    ) -> tuple[Scan, list[tuple[int, int]], bool]:
        """Apply the journal's records the JSON does not hold yet, in order.

        Returns how the scan ended, the (seq, offset) of every whole record, and whether the
        records follow the JSON (False: they belong to another version of it, and none was
        applied). ``reader``: a read-only open beside a running writer, whose append in progress
        looks like a torn tail (not worth a warning). Raises StoreError when the journal cannot be read.
        """
        try:
            return self._replay(f, dims, apply, reader)
        except OSError as exc:
            raise StoreError(
                f"cannot read the journal {journal_path(self.path)}: {exc.strerror or exc}"
            ) from exc

    def _replay(
        self, f: BinaryIO, dims: int, apply: Callable[[Change], None], reader: bool
    ) -> tuple[Scan, list[tuple[int, int]], bool]:
        path = journal_path(self.path)
        scan = Scan()
        starts: list[tuple[int, int]] = []
        folded = self.header.journal_seq
        applied = 0
        follows = True
        for change, pos in read_changes(f, dims, scan):
            starts.append((change.seq, pos))
            if change.seq <= self.seq or not follows:
                continue  # already in the JSON (a crash between a fold's rename and the journal's cut)
            if change.seq != self.seq + 1:
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
            apply(change)
            self.seq = change.seq
            self.updated = self.last_at = change.at
            applied += 1
        log_dropped(path, scan, reader=reader)
        if applied:
            log.info("store_journal_replayed", path=str(path), records=applied, json_seq=folded, seq=self.seq)
        return scan, starts, follows

    # ----- folds -----

    def plan(self, t: RowTable) -> FoldPlan:
        """Capture the (compacted) table for a fold; one fold at a time."""
        if self.folding:
            raise StoreError(f"a fold of {self.path} is already in progress")
        n = len(t.rows)
        t.vecs_shared = True  # the plan holds a view: later compactions copy
        header = replace(self.header, updated=utc_now_iso(), journal_seq=self.seq)
        plan = FoldPlan(
            path=self.path,
            head=encode_header(header, n) + NEWLINE,
            rows=tuple(t.rows),
            matrix=t.vecs[:n],
            spans=t.spans[:n].copy() if self.src_fd is not None else None,
            src_fd=os.dup(self.src_fd) if self.src_fd is not None else None,
            seq=self.seq,
            changes=self.changes,
            compactions=t.compactions,
        )
        self.folding = True
        return plan

    def failed(self, plan: FoldPlan, t: RowTable) -> None:
        """A fold's write failed: release it; the store stays as it was."""
        self.folding = False
        plan.close()
        if plan.texts is not None:
            plan.texts.close()
            plan.texts = None
        if plan.eio:
            # The copy may have failed reading the old file (a bad block): the retry must not
            # depend on it, so it serialises every entry from memory instead.
            self._drop_source(t)

    def finish(self, plan: FoldPlan, t: RowTable) -> SaveStats:
        """Adopt a written fold: splice from the new file from now on, cut the journal."""
        assert plan.stats is not None and plan.stat is not None and plan.new_spans is not None
        self.folding = False
        plan.close_src()
        parsed = parse_header_line(plan.head)
        self.header.updated = self.updated = parsed.updated if parsed is not None else utc_now_iso()
        self.header.journal_seq = plan.seq
        self.json_size = plan.stat.st_size
        self.durable = max(self.durable, plan.changes)
        if self.changes == plan.changes:
            self.full_next = False
        self.pending = [(seq, rec) for seq, rec in self.pending if seq > plan.seq]
        self._switch_source(plan, t)
        if plan.texts is not None:
            t.read_texts_from(plan.rows, plan.texts)
            plan.texts = None
        if self.journal is not None and self.journal.records:
            try:
                self.journal.cut_through(plan.seq)
            except OSError as exc:
                # Harmless: records the JSON holds are skipped at open; the next fold cuts them.
                log.warning("store_journal_cut_failed", path=str(self.journal.path), reason=str(exc))
        stats = replace(plan.stats, seconds=time.perf_counter() - plan.started)
        log.debug(
            "store_saved", path=str(self.path), **{k: v for k, v in stats.__dict__.items() if k != "saved"}
        )
        return stats

    def _drop_source(self, t: RowTable) -> None:
        """Stop splicing from the current file: the next fold writes every entry anew."""
        if self.src_fd is not None:
            os.close(self.src_fd)
            self.src_fd = None
        t.spans[:, 0] = -1

    def _switch_source(self, plan: FoldPlan, t: RowTable) -> None:
        """Point the entries' spans at the file just written (rows changed since the plan: -1)."""
        self._drop_source(t)
        fd, plan.new_fd = plan.new_fd, None
        if fd is None or plan.new_spans is None:
            return  # without the new file open its spans are useless: the next fold serialises all
        self.src_fd = fd
        n = len(plan.rows)
        if t.compactions == plan.compactions:
            # Rows kept their positions: a row is in the new file as it is now unless it was
            # removed or renamed (a new record in its place) since the plan.
            same = np.fromiter(
                (a is b for a, b in zip(t.rows[:n], plan.rows, strict=True)), np.bool_, count=n
            )
            same &= t.alive[:n]
            t.spans[:n][same] = plan.new_spans[same]
            return
        now = {id(r): r.row for r in t.rows if r.alive}
        for i, r in enumerate(plan.rows):
            row = now.get(id(r))
            if row is not None:
                t.spans[row] = plan.new_spans[i]

    def close(self) -> None:
        """Close the JSON file and the journal; idempotent."""
        if self.src_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.src_fd)
            self.src_fd = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None
