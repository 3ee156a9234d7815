"""Each file's state, for ``embedd status --files`` and ``GET /v1/files``.

A file is ``indexed`` (with its chunks and when), ``pending`` (waiting in the debouncer, due or
in progress), ``failed`` (an unexpected error) or ``skipped`` (unreadable, binary, too big...)
with the reason and since when, or ``unavailable`` (its folder cannot be reached; its entries
are kept). The worker records what it learns in a ``FileBook``; ``page`` builds the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from daemon.service.folders import utc_now

State = Literal["indexed", "pending", "failed", "skipped", "unavailable"]
STATES: tuple[State, ...] = ("indexed", "pending", "failed", "skipped", "unavailable")


@dataclass(frozen=True)
class FileRow:
    """One file as ``/v1/files`` lists it."""

    source: str
    state: State
    chunks: int
    indexed_at: str | None
    reason: str | None
    since: str | None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one file."""
        return {
            "source": self.source,
            "state": self.state,
            "chunks": self.chunks,
            "indexed_at": self.indexed_at,
            "reason": self.reason,
            "since": self.since,
        }


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FileBook:
    """What the worker learnt about files beyond the store: why one is not indexed, when one was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, tuple[State, str, str]] = {}
        self._indexed_at: dict[str, str] = {}

    def indexed(self, source: str) -> None:
        """``source`` was indexed just now."""
        with self._lock:
            self._problems.pop(source, None)
            self._indexed_at[source] = utc_now()

    def problem(self, source: str, state: State, reason: str) -> None:
        """``source`` was skipped or failed; ``since`` is kept while the reason stays the same."""
        with self._lock:
            old = self._problems.get(source)
            if old is None or old[:2] != (state, reason):
                self._problems[source] = (state, reason, utc_now())

    def removed(self, source: str) -> None:
        """``source`` left the store (or its problem is no longer current)."""
        with self._lock:
            self._problems.pop(source, None)
            self._indexed_at.pop(source, None)

    def problems(self) -> dict[str, tuple[State, str, str]]:
        """A copy of the skipped and failed files: state, reason, since."""
        with self._lock:
            return dict(self._problems)

    def indexed_at(self, source: str) -> str | None:
        """When the daemon indexed ``source`` in this run, if it did."""
        with self._lock:
            return self._indexed_at.get(source)


def page(
    rows: Iterable[FileRow], *, state: str | None, prefix: str | None, limit: int, offset: int
) -> dict[str, Any]:
    """``{"files", "total", "next_offset"}``: the rows that match, sorted by source, one page."""
    chosen = sorted(
        (
            r
            for r in rows
            if (state is None or r.state == state) and (prefix is None or r.source.startswith(prefix))
        ),
        key=lambda r: r.source,
    )
    shown = chosen[offset : offset + limit]
    after = offset + len(shown)
    return {
        "files": [r.to_json() for r in shown],
        "total": len(chosen),
        "next_offset": after if after < len(chosen) else None,
    }


def build_rows(
    stored: Iterable[str],
    pending: Iterable[str],
    *,
    problems: dict[str, tuple[State, str, str]],
    outage_of: Callable[[str], tuple[str, str] | None],
    chunks_of: Callable[[str], list[int]],
    indexed_at: Callable[[str], str | None],
) -> list[FileRow]:
    """Every file the daemon knows, in its most telling state: unavailable (``outage_of`` gives
    the folder's reason and since), failed or skipped, pending, else indexed. ``chunks_of``
    gives a stored file's entry timestamps (ms), one per chunk."""
    waiting = set(pending)
    rows = []
    for source in set(stored) | waiting | problems.keys():
        stamps = chunks_of(source)
        when = indexed_at(source) or (iso_ms(max(stamps)) if stamps else None)
        outage = outage_of(source)
        if outage is not None:
            rows.append(FileRow(source, "unavailable", len(stamps), when, outage[0], outage[1]))
        elif source in problems:
            state, reason, since = problems[source]
            rows.append(FileRow(source, state, len(stamps), when, reason, since))
        elif source in waiting:
            rows.append(FileRow(source, "pending", len(stamps), when, None, None))
        else:
            rows.append(FileRow(source, "indexed", len(stamps), when, None, None))
    return rows


def stored_rows(sources: Sequence[str], chunks_of: Callable[[str], list[int]]) -> list[FileRow]:
    """The rows of a store read without a daemon: every file indexed, as the store recorded it."""
    return build_rows(
        sources, (), problems={}, outage_of=lambda s: None, chunks_of=chunks_of, indexed_at=lambda s: None
    )
