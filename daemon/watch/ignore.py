"""Ignore rules as git has them: ``.gitignore`` and ``.ignore`` files, and ``.git/info/exclude``.

One ``IgnoreRules`` per watched folder, kept in this module's cache (``rules_for``) so the walk
and every live event share it; ``forget`` drops a folder's rules when an ignore file below it
changed (or a full walk starts), and they are read again lazily, one folder's files at a time.

Precedence follows git: ``.git/info/exclude`` is weakest, then each folder's ``.gitignore``
from the top down (a deeper file's rules win over a shallower one's), and within a file the
last matching pattern wins; ``.ignore`` (the file ripgrep and the silver searcher read) sits
above the ``.gitignore`` of its own folder. A file inside an ignored folder stays ignored
whatever a negation says, as in git, which never looks inside it. Patterns are matched by
pathspec's ``GitIgnoreSpec``, relative to the folder holding their file.

When the watched folder sits inside a git work tree, the rules are those of the work tree:
ignore files of the folders between the work tree's top and the watched folder count too,
unless they ignore the watched folder itself (the user chose it): then only the ignore files
inside it count.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog
from pathspec import GitIgnoreSpec

from daemon.log import display_path

log = structlog.get_logger(__name__)

IGNORE_FILES = (".gitignore", ".ignore")  # in rising precedence within one folder
GIT_DIR = ".git"
EXCLUDE_FILE = PurePosixPath(GIT_DIR, "info", "exclude")
# An ignore file is a list of short patterns: a huge one is not an ignore file worth reading.
_MAX_IGNORE_BYTES = 1024 * 1024


def is_ignore_file(path: Path) -> bool:
    """Whether a change to ``path`` may change what the rules ignore."""
    return path.name in IGNORE_FILES or path.as_posix().endswith("/" + EXCLUDE_FILE.as_posix())


def _work_tree_top(root: Path) -> Path:
    """The top of the git work tree holding ``root`` (``root`` itself when there is none)."""
    for folder in (root, *root.parents):
        if os.path.lexists(folder / GIT_DIR):
            return folder
    return root


def _read_spec(path: Path) -> GitIgnoreSpec | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_IGNORE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        log.warning("ignore_file_unreadable", path=display_path(path), reason=exc.strerror or str(exc))
        return None
    if len(data) > _MAX_IGNORE_BYTES:
        log.warning("ignore_file_too_large", path=display_path(path), limit_bytes=_MAX_IGNORE_BYTES)
        return None
    lines = data.decode("utf-8", "replace").splitlines()
    try:
        spec = GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError) as exc:  # a malformed pattern: git skips it, here the whole file
        log.warning("ignore_file_invalid", path=display_path(path), reason=str(exc))
        return None
    return spec if len(spec) else None


@dataclass
class IgnoreRules:
    """The ignore rules for the files below ``root`` (a watched folder).

    Thread-safe: the service's worker and a verify or API thread may ask at once.
    """

    root: Path
    top: Path = field(init=False)
    _specs: dict[Path, tuple[GitIgnoreSpec, ...]] = field(default_factory=dict, init=False)
    _dirs: dict[Path, bool] = field(default_factory=dict, init=False)
    _exclude: GitIgnoreSpec | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.top = _work_tree_top(self.root)
        self._exclude = _read_spec(self.top / EXCLUDE_FILE)
        if self.top != self.root and self._root_ignored():
            # The user chose to watch a folder its work tree ignores (embedd's own inbox/, a
            # notes folder inside a dotfiles repository): the work tree's rules are not about
            # this folder, so only the ignore files inside it count.
            log.info(
                "ignore_rules_above_not_applied",
                root=display_path(self.root),
                work_tree=display_path(self.top),
                reason="the work tree's ignore rules ignore the watched folder itself",
            )
            self.top = self.root
            self._exclude = None
            self._specs.clear()

    def _root_ignored(self) -> bool:
        """Whether the rules from the work tree's top ignore the root or a folder on the way to it."""
        folder = self.top
        for part in self.root.relative_to(self.top).parts:
            folder = folder / part
            if self._verdict(folder, True):
                return True
        return False

    def _folder_specs(self, folder: Path) -> tuple[GitIgnoreSpec, ...]:
        specs = self._specs.get(folder)
        if specs is None:
            specs = tuple(s for s in (_read_spec(folder / name) for name in IGNORE_FILES) if s is not None)
            self._specs[folder] = specs
        return specs

    def _verdict(self, path: Path, is_dir: bool) -> bool:
        """Whether the patterns ignore ``path`` itself (its folders not considered)."""
        rel = path.relative_to(self.top).as_posix() + ("/" if is_dir else "")
        ignored = False
        if self._exclude is not None:
            include = self._exclude.check_file(rel).include
            ignored = include if include is not None else ignored
        folder = self.top
        for part in ("", *PurePosixPath(rel).parts[:-1]):
            folder = folder / part if part else folder
            below = path.relative_to(folder).as_posix() + ("/" if is_dir else "")
            for spec in self._folder_specs(folder):
                include = spec.check_file(below).include
                if include is not None:
                    ignored = include
        return ignored

    def _dir_ignored(self, folder: Path) -> bool:
        """Whether ``folder`` (below the root) or a folder above it is ignored; cached."""
        if folder == self.root or self.root not in folder.parents:
            return False
        cached = self._dirs.get(folder)
        if cached is None:
            cached = folder.name == GIT_DIR or self._dir_ignored(folder.parent) or self._verdict(folder, True)
            self._dirs[folder] = cached
        return cached

    def ignores(self, path: Path, *, is_dir: bool = False) -> bool:
        """Whether ``path`` (a file, or a folder with ``is_dir``, below the root) is ignored."""
        with self._lock:
            if is_dir:
                return self._dir_ignored(path)
            if path.name == GIT_DIR or self._dir_ignored(path.parent):
                return True
            return self._verdict(path, False)


_cache: dict[Path, IgnoreRules] = {}
_cache_lock = threading.Lock()


def rules_for(root: Path) -> IgnoreRules:
    """The cached rules of the watched folder ``root`` (read on first use)."""
    with _cache_lock:
        rules = _cache.get(root)
        if rules is None:
            rules = _cache[root] = IgnoreRules(root)
        return rules


def forget(root: Path) -> None:
    """Drop the cached rules of ``root``: the next question reads its ignore files again."""
    with _cache_lock:
        _cache.pop(root, None)
