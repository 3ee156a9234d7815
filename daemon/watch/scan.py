"""Which files a configuration indexes, and under which source name: the daemon's path rules.

One place for them, used by the running daemon (``daemon.service.service``) and by ``embedd verify``:
the first watch that contains a path decides; excluded folders are never entered; symlinks are
never followed, not even as a folder on the way to a file; names that are not valid UTF-8 are
not indexed, because the store keeps names as UTF-8 text.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.config import WatchConfig
from daemon.log import display_path
from daemon.watch import ignore

log = structlog.get_logger(__name__)

NOT_UTF8 = (
    "file name is not valid UTF-8, and the store keeps names as UTF-8 text; "
    "rename the file (or its folder) to index it"
)
IN_SYMLINKED_FOLDER = "inside a symlinked folder (symlinks are never followed)"


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


def is_utf8(name: str) -> bool:
    """False for names the OS handed over with lone surrogates (bytes that are not UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        # The first watch that contains the path decides: a nested watch listed later never
        # takes a file the outer one rejects.
        if not watch.matches(relpath) or _ignored(watch, path, relpath):
            return None
        return watch, f"{watch.name}/{relpath}"
    return None


def _ignored(watch: WatchConfig, path: Path, relpath: str) -> bool:
    """``.git/`` is never indexed; the ignore files' rules apply when the watch respects them."""
    if ignore.GIT_DIR in relpath.split("/"):
        return True
    return watch.respect_gitignore and ignore.rules_for(watch.path).ignores(path)


def skips_folder(watch: WatchConfig, path: Path) -> bool:
    """Whether a walk leaves the folder ``path`` (below ``watch.path``) unentered."""
    if watch.skips_dir(path.name) or path.name == ignore.GIT_DIR:
        return True
    return watch.respect_gitignore and ignore.rules_for(watch.path).ignores(path, is_dir=True)


def ignore_rules_changed(watches: Sequence[WatchConfig], path: Path) -> Path | None:
    """When ``path`` is an ignore file of a watch that respects them: forget that watch's rules
    and return the folder whose files they may have changed; otherwise None."""
    if not ignore.is_ignore_file(path):
        return None
    for watch in watches:
        if watch.path not in path.parents:
            continue
        if not watch.respect_gitignore:
            return None
        ignore.forget(watch.path)
        inside_git = ignore.GIT_DIR in path.relative_to(watch.path).parts
        return watch.path if inside_git else path.parent
    return None


def path_of(watches: Sequence[WatchConfig], source: str) -> Path | None:
    """The file a stored source name stands for, or None when no watch names it."""
    for watch in watches:
        if source.startswith(watch.name + "/"):
            return watch.path / source[len(watch.name) + 1 :]
    return None


def sources_under(watches: Sequence[WatchConfig], sources: Iterable[str], path: Path) -> list[str]:
    """The ``sources`` at or below folder ``path`` (a deleted, moved or rescanned folder)."""
    for watch in watches:
        try:
            rel = path.relative_to(watch.path).as_posix()
        except ValueError:
            continue
        prefix = watch.name + "/" if rel in ("", ".") else f"{watch.name}/{rel}/"
        return [s for s in sources if s.startswith(prefix)]
    return []


def unindexable(watch: WatchConfig, source: str, path: Path) -> str | None:
    """Why ``path`` (at ``source``) must not be indexed whatever it holds, or None.

    A walk never descends into a symlinked folder, but an event or a rescan racing a folder
    swapped for a symlink could still name a path through one; lstat() and O_NOFOLLOW guard
    only the last component, so the folders are checked here.
    """
    if not is_utf8(source):
        return NOT_UTF8
    parent = path.parent
    if parent != watch.path:
        expected = Path(os.path.realpath(watch.path)) / parent.relative_to(watch.path)
        if Path(os.path.realpath(parent)) != expected:
            return IN_SYMLINKED_FOLDER
    return None


# Told about a folder a walk could not list (EACCES, EIO): the files below it are unknown, not gone.
Unreadable = Callable[[Path, OSError], None]


def _log_unreadable(folder: Path, exc: OSError) -> None:
    log.warning("folder_unreadable", path=display_path(folder), reason=exc.strerror or str(exc))


def walk(
    watches: Sequence[WatchConfig], watch: WatchConfig, top: Path, on_unreadable: Unreadable | None = None
) -> Iterator[FoundFile]:
    """Files below ``top`` that ``watch`` selects, with lstat results; symlinks never followed.

    A folder that cannot be listed is passed to ``on_unreadable`` (logged when None) and skipped.
    A walk of the whole folder reads its ignore files afresh, so a periodic rescan also
    catches an ignore file changed while no event reported it.
    """
    if top == watch.path:
        ignore.forget(watch.path)
    unreadable = on_unreadable or _log_unreadable
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        except OSError as exc:
            unreadable(folder, exc)
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not skips_folder(watch, path):
                    stack.append(path)
                continue
            located = locate(watches, path)
            if located is not None and located[0] is watch:
                yield FoundFile(path, located[1], watch, st)


def selected_files(watches: Sequence[WatchConfig]) -> Iterator[FoundFile]:
    """Every file the watches select, folder by folder; a missing watched folder yields nothing."""
    for watch in watches:
        yield from walk(watches, watch, watch.path)
