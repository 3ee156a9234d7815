"""A fold: the full atomic rewrite of the JSON store (and its sidecar cache) from one state.

``Store.begin_fold`` captures the state under the store's lock (cheap: row records, a view of
the matrix the store then never writes, a copy of the spans, a duplicate of the current
file's descriptor); ``write_fold`` writes it with no lock held, on any thread, so a fold of a
large store delays neither searches nor indexing; ``Store.finish_fold`` adopts the result
under the lock again. The JSON is written as before: a temp file, fsync, rename, fsync the
folder, splicing the unchanged entries' bytes from the previous file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon.errors import StoreError
from daemon.store.cache import JsonSignature, write_cache
from daemon.store.entries import SaveStats
from daemon.store.format import FloatMatrix, SpanArray
from daemon.store.io import AtomicWriter
from daemon.store.rows import RowRecord, columns_of
from daemon.store.splice import write_spliced
from daemon.store.texts import Texts


@dataclass
class FoldPlan:
    """One state of the store to write, and, once written, what the write gave."""

    path: Path
    head: bytes  # the header line, with this state's ``journal_seq`` and ``updated``
    rows: Sequence[RowRecord]  # live, in file order; row i's vector is matrix[i]
    matrix: FloatMatrix
    spans: SpanArray | None  # where each row's bytes are in the file at src_fd (-1: not there)
    src_fd: int | None  # our own duplicate; closed by ``close``
    seq: int  # the last journal record this state holds
    changes: int  # the store's change counter at capture
    compactions: int  # the row table's compaction counter at capture (row positions held)
    started: float = field(default_factory=time.perf_counter)
    # Filled in by write_fold:
    stat: os.stat_result | None = None
    new_fd: int | None = None  # the new file, open for the next fold's splicing
    new_spans: SpanArray | None = None
    stats: SaveStats | None = None
    eio: bool = False  # the write failed with EIO: the next one must not read the old file
    texts: Texts | None = None  # the rows' texts as the new cache holds them (row i: text i)

    def close_src(self) -> None:
        """Close the descriptor of the previous file; idempotent."""
        if self.src_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.src_fd)
            self.src_fd = None

    def close(self) -> None:
        """Close the descriptors the plan still owns; idempotent."""
        for name in ("src_fd", "new_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)


def write_fold(plan: FoldPlan, *, cache: bool = True) -> FoldPlan:
    """Write ``plan``'s state as the new JSON store, durably, then its sidecar cache.

    Touches only the plan and the files, so it may run on any thread without the store's
    lock. Raises StoreError when the file cannot be written (disk full, I/O error, read-only
    folder); the previous file is then intact.
    """
    n = len(plan.rows)
    try:
        with AtomicWriter(plan.path) as w:
            spans, reused = write_spliced(
                w, plan.head, plan.rows, plan.matrix, old=plan.spans, src_fd=plan.src_fd
            )
            st = w.commit()
    except OSError as exc:
        # The copy may have failed reading the old file (a bad block): the retry must not
        # depend on it, so it serialises every entry from memory instead.
        plan.eio = exc.errno == errno.EIO
        raise StoreError(
            f"cannot save the store {plan.path}: {exc.strerror or exc}; the previous version is "
            "intact and the changes are kept (in the journal, or in memory) for the next save"
        ) from exc
    durable = time.perf_counter() - plan.started
    plan.stat, plan.new_spans = st, spans
    fd = -1
    with contextlib.suppress(OSError):
        fd = os.open(plan.path, os.O_RDONLY)
    if fd >= 0 and os.fstat(fd).st_ino == st.st_ino:
        plan.new_fd = fd
        if cache:
            plan.texts = write_cache(
                plan.path, JsonSignature.of(fd, st, plan.head), columns_of(plan.rows, plan.matrix, spans)
            )
    elif fd >= 0:
        os.close(fd)
    plan.stats = SaveStats(
        True,
        n,
        n - reused,
        reused,
        w.bytes_written,
        w.bytes_copied,
        durable,
        time.perf_counter() - plan.started,
    )
    return plan
