"""Row records made when first asked for, for a store opened read-only.

A search without the daemon, or an export of a few files, reads a handful of a million rows:
building a million records at open cost most of a second and a few hundred megabytes it never
used. ``LazyRows`` holds the loaded columns and makes row ``i``'s record the first time it is
read; ``LazyGroups`` finds each source's rows from the source column alone (a stable sort of
its codes) and makes a source's records when that source is asked for. The journal replayed
at open still edits them as it edits the writer's lists: a new row is appended, a renamed one
replaced, a source's list set or dropped. Both assume nobody changes them once the store is
open, which holds for a read-only store (its snapshots hand them out without a copy).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, MutableMapping, MutableSequence
from typing import overload

import numpy as np
import numpy.typing as npt

from daemon.store.format import Columns
from daemon.store.rows import RowRecord, chunk_ordered, grouped, rising
from daemon.store.signature import signature, signature_of
from daemon.store.texts import Texts

Codes = npt.NDArray[np.int32]


class LazyRows(MutableSequence[RowRecord]):
    """The rows of loaded ``cols``, each record made at its first read, then the rows appended."""

    def __init__(self, cols: Columns) -> None:
        self.cols = cols
        self._made: list[RowRecord | None] = [None] * len(cols)
        # Rows whose record is no longer the columns' (renamed by the journal): their source differs.
        self.replaced: set[int] = set()

    def _make(self, i: int) -> RowRecord:
        c = self.cols
        text = (c.contents, i) if isinstance(c.contents, Texts) else c.contents[i]
        r = RowRecord(
            c.ids[i], text, c.sources[i], c.pages[i], c.chunks[i], c.hashes[i], c.timestamps[i],
            c.extras[i], i, c.sections[i], c.titles[i],
        )  # fmt: skip
        self._made[i] = r
        return r

    def __len__(self) -> int:
        return len(self._made)

    @property
    def made(self) -> int:
        """How many records exist so far (the rest are only columns)."""
        return len(self._made) - self._made.count(None)

    @overload
    def __getitem__(self, i: int) -> RowRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[RowRecord]: ...
    def __getitem__(self, i: int | slice) -> RowRecord | list[RowRecord]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._made)))]
        r = self._made[i]
        return r if r is not None else self._make(i % len(self._made))

    def __iter__(self) -> Iterator[RowRecord]:
        for i, r in enumerate(self._made):
            yield r if r is not None else self._make(i)

    @overload
    def __setitem__(self, i: int, r: RowRecord) -> None: ...
    @overload
    def __setitem__(self, i: slice, r: Iterable[RowRecord]) -> None: ...
    def __setitem__(self, i: int | slice, r: RowRecord | Iterable[RowRecord]) -> None:
        if isinstance(i, slice) or not isinstance(r, RowRecord):
            raise TypeError("rows are replaced one at a time")
        self._made[i] = r
        if i < len(self.cols):
            self.replaced.add(i % len(self._made))

    def __delitem__(self, i: int | slice) -> None:
        raise TypeError("rows are never deleted, only marked dead")

    def insert(self, index: int, value: RowRecord) -> None:
        """Only at the end (``append``): rows are never moved."""
        if index != len(self._made):
            raise TypeError("rows are only appended")
        self._made.append(value)

    def source_codes(self) -> tuple[Codes, tuple[str, ...]]:
        """Each row's source as an index into the tuple of distinct sources."""
        codes, names = _codes_of(self.cols)
        extra = [i for i in self.replaced if i < len(codes)]
        if len(self._made) == len(codes) and not extra:
            return codes, names
        index = {n: k for k, n in enumerate(names)}
        out = np.empty(len(self._made), dtype=np.int32)
        out[: len(codes)] = codes
        for i in itertools.chain(extra, range(len(codes), len(self._made))):
            out[i] = index.setdefault(self[i].source, len(index))
        return out, tuple(index)


class LazyGroups(MutableMapping[str, list[RowRecord]]):
    """Each source's rows in chunk order, made when that source is first asked for.

    Sources set or removed since the open (by the journal) are kept apart and win.
    """

    def __init__(self, rows: LazyRows) -> None:
        self._rows = rows
        codes, names = _codes_of(rows.cols)
        self._order, self._starts = grouped(codes, len(names))
        self._code = {n: k for k, n in enumerate(names)}
        self._over: dict[str, list[RowRecord] | None] = {}  # None: removed

    def _held(self, source: str) -> bool:
        """True when the loaded columns hold rows of ``source``."""
        code = self._code.get(source)
        return code is not None and self._starts[code] < self._starts[code + 1]

    def _base(self, source: str) -> list[int] | None:
        """The loaded rows of ``source`` in file order, if any."""
        if not self._held(source):
            return None
        code = self._code[source]
        found: list[int] = self._order[self._starts[code] : self._starts[code + 1]].tolist()
        return found

    def __getitem__(self, source: str) -> list[RowRecord]:
        if source in self._over:
            made = self._over[source]
            if made is None:
                raise KeyError(source)
            return made
        found = self._base(source)
        if found is None:
            raise KeyError(source)
        group = chunk_ordered([self._rows[i] for i in found])
        self._over[source] = group
        return group

    def __setitem__(self, source: str, rows: list[RowRecord]) -> None:
        self._over[source] = rows

    def __delitem__(self, source: str) -> None:
        if source not in self:
            raise KeyError(source)
        self._over[source] = None

    def __contains__(self, source: object) -> bool:
        if not isinstance(source, str):
            return False
        if source in self._over:
            return self._over[source] is not None
        return self._held(source)

    def __iter__(self) -> Iterator[str]:
        for source in self._code:
            if source not in self._over and self._held(source):
                yield source
        yield from (s for s, v in self._over.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def signatures(self) -> dict[str, str]:
        """The keyword index's signature of each source's rows (``signature.signatures``): those the
        cache recorded for the sources as loaded, the others' from their rows."""
        c = self._rows.cols
        if c.signatures is None:
            codes, names = _codes_of(c)
            c.signatures = source_signatures(c, codes, len(names))
        loaded = c.signatures
        out = {s: loaded[k] for s, k in self._code.items() if s not in self._over and self._held(s)}
        out.update((s, signature(rows)) for s, rows in self._over.items() if rows)
        return out


def source_signatures(cols: Columns, codes: Codes, count: int) -> list[str]:
    """The keyword index's signature (``signature.signature``) of the rows of each source code
    below ``count``, ``codes`` giving each row's; from the columns, without making records."""
    rows, starts = grouped(codes, count)
    order: list[int] = rows.tolist()
    ids, hashes, chunks, sections, titles = (
        list(cols.ids),
        list(cols.hashes),
        cols.chunks,
        cols.sections,
        cols.titles,
    )
    out: list[str] = []
    for k in range(count):
        found = order[starts[k] : starts[k + 1]]
        if not rising([chunks[i] for i in found]):
            found.sort(key=chunks.__getitem__)  # stable, as chunk_ordered sorts
        out.append(signature_of((ids[i], hashes[i], sections[i], titles[i]) for i in found))
    return out


def _codes_of(cols: Columns) -> tuple[Codes, tuple[str, ...]]:
    if cols.source_codes is not None:
        return cols.source_codes
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(s, len(names)) for s in cols.sources), np.int32, count=len(cols))
    cols.source_codes = codes, tuple(names)
    return cols.source_codes
