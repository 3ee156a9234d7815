"""What the keyword index (``daemon.store.keyword``) must hold for each source: a signature of
its rows' ids, hashes, sections and titles. Equal signatures, nothing to index again; the index
records each source's, and the sidecar cache records those of the rows it holds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol, runtime_checkable

from daemon.store.entries import Row
from daemon.store.format import Columns


def signature(rows: Sequence[Row]) -> str:
    """What the index must hold for one source's rows: equal signatures, nothing to do."""
    return signature_of((r.id, r.hash, r.section, r.title) for r in rows)


def signature_of(rows: Iterable[tuple[str, str, str | None, str | None]]) -> str:
    """``signature`` of one source's rows given as (id, hash, section, title)."""
    h = hashlib.blake2b(digest_size=16)
    h.update("".join(f"{i}\x1f{hash_}\x1f{s or ''}\x1f{t or ''}\x1e" for i, hash_, s, t in rows).encode())
    return h.hexdigest()


@runtime_checkable
class SignsSources(Protocol):
    """Sources that sign their rows themselves (``daemon.store.lazy``: without making records)."""

    def signatures(self) -> dict[str, str]:
        """Each source's ``signature``."""
        ...


def signatures(sources: Mapping[str, Sequence[Row]]) -> dict[str, str]:
    """The ``signature`` of every source that has rows."""
    if isinstance(sources, SignsSources):
        return sources.signatures()
    return {s: signature(rows) for s, rows in sources.items() if rows}


class Presigned(Mapping[str, Sequence[Row]]):
    """A writer's sources with the signatures the sidecar cache recorded for them as loaded: the
    keyword index's check at open signs anew only the sources ``changed`` since (by the journal)."""

    def __init__(
        self, groups: Mapping[str, Sequence[Row]], loaded: Mapping[str, str], changed: AbstractSet[str]
    ) -> None:
        self._groups = groups
        self._loaded = loaded
        self._changed = changed

    def __getitem__(self, source: str) -> Sequence[Row]:
        return self._groups[source]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def signatures(self) -> dict[str, str]:
        """Each source's ``signature``: the recorded one where the source did not change."""
        loaded, changed = self._loaded, self._changed
        return {
            s: loaded[s] if s in loaded and s not in changed else signature(rows)
            for s, rows in self._groups.items()
            if rows
        }


def recorded(cols: Columns) -> dict[str, str]:
    """The signatures the cache recorded for the sources of ``cols`` (none when it did not)."""
    if cols.signatures is None or cols.source_codes is None:
        return {}
    return dict(zip(cols.source_codes[1], cols.signatures, strict=True))
