"""Which files a configuration indexes, and under which source name: the daemon's rules, read-only.

These are the rules ``daemon.service`` applies when it scans (the first watch that contains a
path decides; excluded folders are never entered; symlinks are never followed), kept here
without a store or an embedder so ``embedd verify`` can compare the disk with a store.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.config import WatchConfig

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FoundFile:
    """A file below a watched folder that its watch selects, with its ``lstat`` result."""

    path: Path
    source: str
    watch: WatchConfig
    stat: os.stat_result

    @property
    def is_regular(self) -> bool:
        """False for symlinks, sockets and the like, which the daemon never reads."""
        return stat.S_ISREG(self.stat.st_mode)


def locate(watches: Sequence[WatchConfig], path: Path) -> tuple[WatchConfig, str] | None:
    """The watch that indexes ``path`` and its source name, or None when none does."""
    for watch in watches:
        try:
            rel = path.relative_to(watch.path)
        except ValueError:
            continue
        relpath = rel.as_posix()
        if relpath in ("", "."):
            return None
        # The first watch that contains the path decides, as in the daemon: a nested watch
        # listed later never takes a file the outer one rejects.
        return (watch, f"{watch.name}/{relpath}") if watch.matches(relpath) else None
    return None


def path_of(watches: Sequence[WatchConfig], source: str) -> Path | None:
    """The file a stored source name stands for, or None when no watch names it."""
    for watch in watches:
        if source.startswith(watch.name + "/"):
            return watch.path / source[len(watch.name) + 1 :]
    return None


def selected_files(watches: Sequence[WatchConfig]) -> Iterator[FoundFile]:
    """Every file the watches select, folder by folder; a missing watched folder yields nothing."""
    for watch in watches:
        stack = [watch.path]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("folder_unreadable", path=str(folder), reason=exc.strerror or str(exc))
                continue
            for entry in entries:
                path = Path(entry.path)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not watch.skips_dir(entry.name):
                        stack.append(path)
                    continue
                located = locate(watches, path)
                if located is not None and located[0] is watch:
                    yield FoundFile(path, located[1], watch, st)
