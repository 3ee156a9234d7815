"""What a file moved to ``dest`` becomes: the same entries under a new name, or a fresh start.

A pure decision over the disk and the configuration; ``Service`` acts on it (renames the
stored entries, or removes them and indexes the new path afresh).
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.config import WatchConfig
from daemon.ingest.extract import format_of
from daemon.log import display_path
from daemon.service.filestate import file_state
from daemon.store.format import FileState
from daemon.watch import scan


@dataclass(frozen=True)
class Rename:
    """The stored entries stay, under ``source``, with ``state`` as the file's signature."""

    source: str
    state: FileState


@dataclass(frozen=True)
class Drop:
    """The stored entries leave (``reason`` is logged); with ``reindex``, ``dest`` is handled as
    a changed file next (indexed afresh, or skipped with its reason, logged once)."""

    reason: str
    reindex: bool = False


def plan_move(
    watches: Sequence[WatchConfig], old_source: str, old: FileState | None, dest: Path
) -> Rename | Drop:
    """Decide what the move of ``old_source`` (stored with ``old``) to ``dest`` does."""
    new = scan.locate(watches, dest)
    not_indexed = f"moved to {display_path(dest)}, which is not indexed"
    if new is None:
        return Drop(not_indexed)
    try:
        st = dest.lstat()
    except OSError:
        return Drop("moved, then vanished")
    if not stat.S_ISREG(st.st_mode):
        return Drop("moved to something that is not a regular file")
    if scan.unindexable(new[0], new[1], dest) is not None:
        return Drop(not_indexed, reindex=True)  # the change says why, once
    state = file_state(st, dest)
    if format_of(PurePosixPath(old_source)) != format_of(dest) or (
        old is not None and old.extraction != state.extraction
    ):
        # The stored chunks are not what reading the file under its new name gives (notes.txt
        # renamed notes.md is split by its headings now): index it afresh. Unchanged chunks
        # still find their vectors by hash.
        return Drop(f"moved to {display_path(dest)}, which is read as another format", reindex=True)
    return Rename(new[1], state)
