"""An immutable view of the store at one instant, for searches running beside the writer.

``Store.snapshot()`` hands one out (under the store's lock, in a fraction of a millisecond):
the float32 matrix as a read-only view, which rows were alive, and the row records. The
store never changes what a snapshot sees: rows are only ever appended past its end, a
compaction copies into a new matrix while a snapshot holds the old one, and a rename
replaces its row records instead of editing them. So a search ranks a snapshot with no lock
held, while the worker applies changes and saves, and it sees each change whole or not at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from daemon.store.entries import Entry, Row
from daemon.store.format import Fingerprint, FloatMatrix
from daemon.store.keyword import KeywordIndex
from daemon.store.lazy import LazyRows

if TYPE_CHECKING:
    from daemon.store.ann import VectorIndex

BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Snapshot:
    """The store's entries at one version; row ``i`` of ``matrix`` is ``entry(i)``.

    ``alive`` is None when every row is live; otherwise dead rows (removed since the last
    compaction) are still in ``matrix`` and must be masked out of any ranking.
    """

    path: Path
    version: int
    model: str
    dimensions: int
    fingerprint: Fingerprint | None
    files: int
    matrix: FloatMatrix
    alive: BoolMask | None
    rows: Sequence[Row]
    mtimes: Mapping[str, int] = field(default_factory=dict)
    """Each indexed source's recorded mtime (ns), for the modified-time filters."""
    keyword: KeywordIndex | None = None
    """The store's keyword index; it may be ahead of this snapshot (see ``live_row``)."""
    by_source: Mapping[str, Sequence[Row]] | None = None
    """Each source's rows when the snapshot was taken (the store's lists, never edited in place),
    so ``live_row`` finds a chunk without indexing every row of every new snapshot."""
    layout: int = 0
    """Which row numbering ``matrix`` uses: the store counts its compactions (rows move down)."""
    ann: VectorIndex | None = None
    """The store's approximate vector index (``daemon.store.ann``), when it has one; it may be
    ahead of or behind this snapshot, and only proposes candidates."""

    @property
    def count(self) -> int:
        """Live entries."""
        return len(self.rows) if self.alive is None else int(self.alive.sum())

    @property
    def normalized(self) -> bool:
        """True when the vectors are unit length (so a dot product is the cosine)."""
        return self.fingerprint is not None and self.fingerprint.normalize

    def entry(self, i: int) -> Entry:
        """The entry at row ``i`` (its vector a read-only view)."""
        r = self.rows[i]
        return Entry(
            r.id, r.content, r.source, r.page, r.chunk, r.hash, self.matrix[i], r.timestamp, r.extra,
            section=r.section, title=r.title,
        )  # fmt: skip

    @functools.cached_property
    def _row_of(self) -> dict[tuple[str, int], int]:
        # Built once per snapshot, on its first keyword search; live rows only (a dead row may
        # carry the key of a live one: a rename over a file that was removed).
        rows = self.rows
        if self.alive is None:
            return {(r.source, r.chunk): i for i, r in enumerate(rows)}
        return {(rows[i].source, rows[i].chunk): i for i in np.flatnonzero(self.alive).tolist()}

    def live_row(self, source: str, chunk: int, hash_: str) -> int | None:
        """The row of this live chunk in this snapshot, or None when the snapshot does not hold it
        (the keyword index already saw a later change)."""
        if self.by_source is not None:
            rows = self.by_source.get(source, ())
            r = rows[chunk] if 0 <= chunk < len(rows) and rows[chunk].chunk == chunk else None
            if r is None:
                r = next((x for x in rows if x.chunk == chunk), None)
            if r is None:
                return None
            # ``row`` is the store's position of the row; a compaction since this snapshot may
            # have moved it, which the identity check sees (then the full index below).
            i = getattr(r, "row", -1)
            if 0 <= i < len(self.rows) and self.rows[i] is r:
                if r.hash != hash_ or (self.alive is not None and not self.alive[i]):
                    return None
                return int(i)
        i = self._row_of.get((source, chunk))
        if i is None or self.rows[i].hash != hash_:
            return None
        return i

    @functools.cached_property
    def source_codes(self) -> tuple[npt.NDArray[np.int32], tuple[str, ...]]:
        """Each row's source as an index into the tuple of distinct sources (for filters)."""
        if isinstance(self.rows, LazyRows):
            return self.rows.source_codes()  # from the loaded column, no record made
        names: dict[str, int] = {}
        codes = np.fromiter(
            (names.setdefault(r.source, len(names)) for r in self.rows), dtype=np.int32, count=len(self.rows)
        )
        return codes, tuple(names)

    def sources_mask(self, keep: Callable[[str], bool]) -> BoolMask:
        """Rows whose source ``keep`` accepts (asked once per distinct source)."""
        codes, names = self.source_codes
        allowed = np.fromiter((keep(n) for n in names), dtype=np.bool_, count=len(names))
        return allowed[codes] if len(names) else np.zeros(len(self.rows), dtype=np.bool_)

    def source_mask(self, prefix: str) -> BoolMask:
        """Rows whose source starts with ``prefix``."""
        return self.sources_mask(lambda source: source.startswith(prefix))


class Published:
    """The snapshot the store's writer published last; readers take it without any lock.

    The writer calls ``publish`` (under the store's lock) after each change it applies, so a
    reader sees every change whole, and never waits for a change or a save.
    """

    def __init__(self, store: _Snapshots) -> None:
        self._snap = store.snapshot()

    def publish(self, store: _Snapshots) -> None:
        """Make the store's current state the one readers get; cheap when nothing changed."""
        self._snap = store.snapshot()  # one reference assignment: atomic for readers

    def current(self) -> Snapshot:
        """The latest published snapshot."""
        return self._snap


class _Snapshots(Protocol):
    def snapshot(self) -> Snapshot: ...
