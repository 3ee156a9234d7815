"""The store's row table: one record per entry, the float32 matrix beside it, and the spans.

Rows are only ever appended past the end; a removed row is marked dead and stays until a
compaction drops it. That is what lets a snapshot (``daemon.store.snapshot``) or a fold in
progress hold the table's arrays without a lock: the table never writes a row they can see.
A compaction moves rows in place only while nobody holds a view of the matrix; otherwise it
copies the live rows into a new one.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from daemon.store.entries import NewEntry
from daemon.store.format import Columns, Extra, FloatMatrix, SpanArray, entry_id
from daemon.store.texts import TextRef, Texts, text_of


@dataclass(slots=True, eq=False)
class RowRecord:
    """One entry; ``row`` is its row in the matrix and in the spans array.

    Its text is a reference (``text``): a string of its own for a row added since the store
    was opened or last folded, else its place among the texts of the sidecar cache, read from
    that file when needed (``daemon.store.texts``), so a million texts are not a million
    Python strings. One attribute, so a reader on another thread never sees half a change.
    """

    id: str
    text: TextRef
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

    @property
    def content(self) -> str:
        """The chunk's text."""
        return text_of(self.text)


class HashIndex:
    """One live row for each content hash, and the other rows with the same hash.

    Most hashes are unique: a dict of a million one-row lists costs a second to build, a dict
    of the rows themselves a tenth of that.
    """

    def __init__(self, rows: Sequence[RowRecord]) -> None:
        backwards = rows[::-1]  # so that the first row of each hash is the one kept
        self.first: dict[str, RowRecord] = dict(zip(map(_hash, backwards), backwards, strict=True))
        self.more: dict[str, list[RowRecord]] = {}
        if len(self.first) != len(rows):
            for r in rows:
                if self.first[r.hash] is not r:
                    self.more.setdefault(r.hash, []).append(r)

    def get(self, hash_: str) -> RowRecord | None:
        """A live row with this content hash, if any."""
        return self.first.get(hash_)

    def add(self, r: RowRecord) -> None:
        """Index the new row ``r``."""
        if self.first.setdefault(r.hash, r) is not r:
            self.more.setdefault(r.hash, []).append(r)

    def remove(self, r: RowRecord) -> None:
        """Forget the row ``r`` (removed)."""
        more = self.more.get(r.hash)
        if self.first.get(r.hash) is r:
            if more:
                self.first[r.hash] = more.pop(0)
            else:
                del self.first[r.hash]
        elif more is not None:
            more.remove(r)  # RowRecord compares by identity (eq=False)
        if more is not None and not more:
            del self.more[r.hash]

    def replace(self, old: RowRecord, new: RowRecord) -> None:
        """Put ``new`` where ``old`` was (a rename makes a new record)."""
        if self.first.get(old.hash) is old:
            self.first[old.hash] = new
        else:
            more = self.more[old.hash]
            more[more.index(old)] = new


class RowTable:
    """The entries in file order, their vectors, where each one's bytes are in the current file,
    and an index by content hash. Not thread-safe: the store's writer owns it."""

    def __init__(self, dims: int) -> None:
        self.dims = dims
        # A list, or for a read-only store ``daemon.store.lazy.LazyRows`` (records made when read).
        self.rows: MutableSequence[RowRecord] = []
        self.dead = 0
        # The live rows by content hash, built at its first use (an open that changes nothing,
        # such as every read-only one, never needs it).
        self._hashes: HashIndex | None = None
        self.vecs: FloatMatrix = np.empty((0, dims), dtype=np.float32)
        # Row i: offset and length of entry i's bytes in the store's current file; offset -1
        # when the entry is not there as it is now, so the next full write serialises it.
        self.spans: SpanArray = np.empty((0, 2), dtype=np.int64)
        # Row i is live; kept beside the matrix so a snapshot copies n bytes, not n rows.
        self.alive: npt.NDArray[np.bool_] = np.empty(0, dtype=np.bool_)
        # True once a snapshot or a fold holds a view of vecs: compaction must then copy.
        self.vecs_shared = False
        # Bumped by every compaction, so a holder of row positions knows they moved.
        self.compactions = 0
        # The file the loaded rows' texts are read from (the sidecar cache), if any.
        self.texts: Texts | None = None

    def close(self) -> None:
        """Release the file the texts are read from; the rows' texts cannot be read afterwards."""
        if self.texts is not None:
            self.texts.close()

    def adopt(self, cols: Columns, rows: MutableSequence[RowRecord] | None = None) -> None:
        """Take the entries of a loaded file (spans included, when known).

        ``rows``, when given, stands for their records (``daemon.store.lazy.LazyRows``, which
        makes each when first read); else a record is made for every entry now.
        """
        self.vecs = cols.matrix
        self.alive = np.ones(len(cols.matrix), dtype=np.bool_)
        self.spans = np.full((len(cols.matrix), 2), -1, dtype=np.int64)
        if cols.spans is not None:
            self.spans[: len(cols)] = cols.spans
        refs: Iterable[TextRef] = cols.contents
        if isinstance(cols.contents, Texts):
            self.texts = cols.contents
            refs = zip(itertools.repeat(cols.contents), range(len(cols.contents)))
        self._hashes = None
        if rows is not None:
            self.rows = rows
            return
        # The records' strings, cut now: each column's buffer is let go before the next is cut.
        cols.ids = list(cols.ids)
        cols.hashes = list(cols.hashes)
        self.rows = [
            RowRecord(eid, text, source, page, chunk, hash_, ts, extra, row, section, title)
            for row, (eid, text, source, page, chunk, hash_, ts, extra, section, title) in enumerate(
                zip(
                    cols.ids,
                    refs,
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

    def read_texts_from(self, rows: Sequence[RowRecord], texts: Texts) -> None:
        """Read the texts of ``rows`` from ``texts`` (text i is row i's) from now on.

        After a fold the new cache holds every text: rows added since the open let go of
        their strings, and the previous cache file (deleted by the rename) is released once
        no snapshot holds a row of it.
        """
        for i, r in enumerate(rows):
            r.text = (texts, i)
        self.texts = texts

    @property
    def hashes(self) -> HashIndex:
        """The live rows by content hash."""
        if self._hashes is None:
            self._hashes = HashIndex([r for r in self.rows if r.alive] if self.dead else self.rows)
        return self._hashes

    @property
    def count(self) -> int:
        """Live rows."""
        return len(self.rows) - self.dead

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more rows without copying at each append."""
        need = len(self.rows) + extra
        if need > len(self.vecs):
            capacity = max(need, len(self.vecs) * 5 // 4 + 64)
            n = len(self.rows)
            grown = np.empty((capacity, self.dims), dtype=np.float32)
            grown[:n] = self.vecs[:n]
            self.vecs = grown
            spans = np.empty((capacity, 2), dtype=np.int64)
            spans[:n] = self.spans[:n]
            self.spans = spans
            alive = np.empty(capacity, dtype=np.bool_)
            alive[:n] = self.alive[:n]
            self.alive = alive
            self.vecs_shared = False

    def append(self, source: str, e: NewEntry, vec: FloatMatrix) -> RowRecord:
        """A new live row for ``e``; call ``reserve`` first."""
        row = len(self.rows)
        self.vecs[row] = vec
        self.spans[row] = (-1, 0)
        self.alive[row] = True
        r = RowRecord(
            entry_id(source, e.chunk), e.content, source, e.page, e.chunk, e.hash, e.timestamp, None, row,
            e.section, e.title,
        )  # fmt: skip
        self.rows.append(r)
        if self._hashes is not None:
            self._hashes.add(r)
        return r

    def kill(self, r: RowRecord) -> None:
        """Mark ``r`` dead; it stays in the arrays until the next compaction."""
        r.alive = False
        self.alive[r.row] = False
        self.dead += 1
        if self._hashes is not None:
            self._hashes.remove(r)

    def renamed(self, r: RowRecord, source: str) -> RowRecord:
        """A new record for ``r`` under ``source``, in its place (a snapshot keeps the old one)."""
        moved = replace(r, source=source, id=entry_id(source, r.chunk))
        self.rows[r.row] = moved
        if self._hashes is not None:
            self._hashes.replace(r, moved)
        self.spans[r.row, 0] = -1
        return moved

    def same(self, r: RowRecord, source: str, e: NewEntry, vec: FloatMatrix) -> bool:
        """True when ``r`` already is ``e`` at ``source``, bit for bit."""
        return (
            r.hash == e.hash
            and r.page == e.page
            and r.section == e.section
            and r.title == e.title
            and r.timestamp == e.timestamp
            and r.extra is None
            and r.content == e.content
            and r.id == entry_id(source, e.chunk)
            and self.vecs[r.row].tobytes() == vec.tobytes()  # bit for bit: -0.0 is not 0.0
        )

    def compact(self) -> bool:
        """Drop dead rows, moving vectors down so matrix rows match file order.

        In place, unless a snapshot holds a view of the matrix: then the live rows are copied
        into a new one and the holder keeps the old, untouched. Returns True when the matrix
        was replaced (readers should take a new snapshot to let the old one go).
        """
        if not self.dead:
            return False
        target = self.vecs
        if self.vecs_shared:
            target = np.empty_like(self.vecs)
        live: list[RowRecord] = []
        run_src = run_dst = run_len = 0
        for r in self.rows:
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
        self.rows = live
        self.dead = 0
        self.alive[: len(live)] = True
        self.compactions += 1
        if target is self.vecs:
            return False
        self.vecs = target
        self.vecs_shared = False
        return True

    def _move(self, src: int, dst: int, n: int, vecs: FloatMatrix) -> None:
        """Move rows [src, src+n) of the matrix (into ``vecs``) and of the spans down to dst."""
        if not n or (src == dst and vecs is self.vecs):
            return
        # On 1-D views numpy copies overlapping ranges like memmove, without a temporary.
        for source, array in ((self.vecs, vecs), (self.spans, self.spans)):
            width = array.shape[1]
            flat = array.reshape(-1)
            flat[dst * width : (dst + n) * width] = source.reshape(-1)[src * width : (src + n) * width]


def columns_of(rows: Sequence[RowRecord], matrix: FloatMatrix, spans: SpanArray) -> Columns:
    """Compact rows as columns, for the sidecar cache; row i has ``matrix[i]`` and ``spans[i]``."""
    return Columns(
        ids=[r.id for r in rows],
        contents=[r.text for r in rows],
        sources=[r.source for r in rows],
        pages=[r.page for r in rows],
        chunks=[r.chunk for r in rows],
        hashes=[r.hash for r in rows],
        timestamps=[r.timestamp for r in rows],
        extras=[r.extra for r in rows],
        sections=[r.section for r in rows],
        titles=[r.title for r in rows],
        matrix=matrix[: len(rows)],
        spans=spans,
    )


def by_source(rows: Sequence[RowRecord]) -> dict[str, list[RowRecord]]:
    """The rows of each source, in chunk order.

    Our files hold each source's rows together and in order, so this takes runs rather than
    one row at a time; another writer's order is sorted.
    """
    groups: dict[str, list[RowRecord]] = {}
    for source, run in itertools.groupby(rows, key=_source):
        group = groups.get(source)
        if group is None:
            groups[source] = list(run)
        else:
            group.extend(run)
    for group in groups.values():
        chunk_ordered(group)
    return groups


_source = operator.attrgetter("source")
_hash = operator.attrgetter("hash")
_chunk = operator.attrgetter("chunk")


def chunk_ordered(group: list[RowRecord]) -> list[RowRecord]:
    """``group`` sorted by chunk position, in place (stable), unless they already rise."""
    if not rising(list(map(_chunk, group))):
        group.sort(key=_chunk)
    return group


def rising(values: Sequence[int]) -> bool:
    """True when each value is above the one before."""
    return all(map(operator.lt, values, values[1:]))


def grouped(codes: npt.NDArray[np.int32], count: int) -> tuple[npt.NDArray[np.intp], list[int]]:
    """Rows grouped by code (codes below ``count``): the rows in code order, file order within a
    code (a stable sort), and where each code's run starts (``count + 1`` bounds)."""
    order = np.argsort(codes, kind="stable")
    starts: list[int] = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=count)))).tolist()
    return order, starts
