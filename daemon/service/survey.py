"""What a walk of one watched folder finds against the store: the reconcile's reading half.

``Service.reconcile`` acts on a ``Survey`` (skip, rename, remove, queue); the walk itself only
compares each file's stat signature with what the store recorded and with how it last failed,
so it reads the disk and changes nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from daemon.config import WatchConfig
from daemon.service.filestate import FailedAs, failed_as, file_state
from daemon.service.folders import collector
from daemon.store.format import FileState
from daemon.watch import scan

# A file's identity across a rename while the daemon was down: inode, size and mtime.
Identity = tuple[int, int, int]


@dataclass
class Survey:
    """One folder's walk: what is there, what is new or changed, what cannot be indexed."""

    seen: set[str] = field(default_factory=set)  # every source found
    new: dict[Identity, tuple[Path, str]] = field(default_factory=dict)  # not in the store yet
    changed: list[Path] = field(default_factory=list)  # in the store with another signature
    not_regular: list[tuple[str, Path, os.stat_result]] = field(default_factory=list)
    upgraded: int = 0  # changed only in how its format is read now
    unreadable: dict[Path, str] = field(default_factory=dict)  # folders that could not be listed


def identity(state: FileState) -> Identity:
    """The key a vanished file and a new one share when it was renamed."""
    return (state.inode, state.size, state.mtime_ns)


def survey(
    watches: Sequence[WatchConfig],
    watch: WatchConfig,
    start: Path,
    *,
    stored: Callable[[str], FileState | None],
    failed: Callable[[str], FailedAs | None],
) -> Survey:
    """Walk ``start`` (in ``watch``) and sort what it holds; files unchanged since they were
    indexed, or since they last failed, cost one lstat and nothing else."""
    found = Survey()
    # The root may be a symlink the user chose; a folder below it never is followed.
    present = start.is_dir() and (start == watch.path or not start.is_symlink())
    for item in scan.walk(watches, watch, start, collector(found.unreadable)) if present else ():
        path, source, st = item.path, item.source, item.stat
        found.seen.add(source)
        state = file_state(st, path)
        old = stored(source)
        if old == state:
            continue
        if not stat.S_ISREG(st.st_mode):
            found.not_regular.append((source, path, st))
            continue
        if failed(source) == failed_as(st, path):
            continue
        if old is not None and replace(old, extraction=state.extraction) == state:
            found.upgraded += 1
        if old is None:
            found.new[identity(state)] = (path, source)
        else:
            found.changed.append(path)
    return found
