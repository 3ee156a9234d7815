"""Watched folders that cannot be reached: unavailable is not deleted.

A disk that is not mounted, a share that dropped, a folder moved away or made unreadable
looks, to a scan, exactly like a folder whose files were all deleted. Taking it so would wipe
its part of the store and of every sink, and embed it all again when it comes back. So the
worker asks ``root_problem`` before it takes a missing file as deleted, and a folder with a
problem is recorded here as an outage: its entries stay, it is logged once (not at every
rescan), and ``embedd status`` shows it until it is back.

How "unmounted" is told from "emptied by its owner":

- the watched folder is missing, is not a folder, or cannot be listed: unavailable;
- it is empty, at a scan, while the store holds files from it: unavailable (an unmounted
  disk leaves its bare mount point, an empty folder, behind). Files deleted while the daemon
  runs leave the store one by one as their events arrive, so a folder emptied that way holds
  nothing in the store by the time it is empty; one emptied while the daemon was stopped is
  dropped on purpose with ``embedd forget``;
- its device changed since it was last seen with files, and it is empty: unavailable;
- a folder below it that cannot be listed (EACCES, EIO): unavailable, the files below it stay.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from daemon.config import WatchConfig
from daemon.log import display_path
from daemon.service.notices import Notices
from daemon.watch import scan

log = structlog.get_logger("embedd")


@dataclass(frozen=True)
class Outage:
    """A folder that cannot be reached, since when (ISO 8601, UTC) and why."""

    watch: str
    path: Path
    reason: str
    since: str

    def to_json(self) -> dict[str, str]:
        """The folder as ``status`` and ``/v1/status`` show it."""
        return {"watch": self.watch, "path": str(self.path), "reason": self.reason, "since": self.since}


def utc_now() -> str:
    """Now as ISO 8601 UTC with milliseconds, as the store writes its times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def root_problem(root: Path, *, stored: int, known_dev: int | None, at_scan: bool) -> str | None:
    """Why the watched folder ``root`` must be taken as unreachable, or None when it is there.

    ``stored``: how many files the store holds from it; ``known_dev``: its device when it was
    last seen with files; ``at_scan``: a whole scan asks (an empty folder then counts as
    unreachable while the store holds files from it), rather than one file's event.
    """
    try:
        st = root.stat()  # the root itself may be a symlink the user chose
    except FileNotFoundError:
        return "the folder is missing (moved away, or its disk is not mounted)"
    except OSError as exc:
        return f"the folder cannot be read: {_why(exc)}"
    if not stat.S_ISDIR(st.st_mode):
        return "the path is not a folder"
    try:
        with os.scandir(root) as it:
            empty = next(it, None) is None
    except OSError as exc:
        return f"the folder cannot be read: {_why(exc)}"
    if not empty or not stored:
        return None
    if known_dev is not None and known_dev != st.st_dev:
        return "the folder is empty and on another device than before (an unmounted disk's mount point?)"
    if at_scan:
        return (
            f"the folder is empty while the store holds {stored} files from it (an unmounted disk or a "
            "dropped share?); if they were deleted on purpose, run `embedd forget` on it"
        )
    return None


def device_of(root: Path) -> int | None:
    """The device ``root`` is on, or None when it cannot be read."""
    try:
        return root.stat().st_dev
    except OSError:
        return None


def watch_of(watches: Iterable[WatchConfig], path: Path) -> WatchConfig | None:
    """The first watch whose folder is ``path`` or holds it."""
    return next((w for w in watches if path == w.path or w.path in path.parents), None)


def collector(into: dict[Path, str]) -> Callable[[Path, OSError], None]:
    """A walk's ``on_unreadable`` that records each folder it could not list, with the reason."""

    def note(folder: Path, exc: OSError) -> None:
        into[folder] = exc.strerror or str(exc)

    return note


def below_any(path: Path | None, folders: Iterable[Path]) -> bool:
    """True when ``path`` lies below one of ``folders``."""
    return path is not None and any(folder in path.parents for folder in folders)


class Outages:
    """The folders that are unavailable now; written by the worker, read by the status API."""

    def __init__(self, notices: Notices) -> None:
        self._notices = notices
        self._lock = threading.Lock()
        self._out: dict[Path, Outage] = {}
        # A root's device when it was last seen with files: a bare mount point is on another.
        self.devices: dict[Path, int] = {}

    def begin(self, watch: str, path: Path, reason: str, *, kept: int) -> bool:
        """Record that ``path`` cannot be reached; logs once per outage. True when it is new."""
        with self._lock:
            if path in self._out:
                return False
            outage = Outage(watch, path, reason, utc_now())
            self._out[path] = outage
        log.error(
            "folder_unavailable",
            watch=watch,
            path=display_path(path),
            reason=reason,
            kept_files=kept,
            hint="its entries stay in the store and the sinks; it is scanned again when it is back",
        )
        self._notices.notify(
            "folder_unavailable", watch=watch, path=str(path), reason=reason, since=outage.since
        )
        return True

    def end(self, path: Path) -> bool:
        """``path`` can be reached again; True when it was unavailable."""
        with self._lock:
            outage = self._out.pop(path, None)
        if outage is None:
            return False
        log.info("folder_back", watch=outage.watch, path=display_path(path), unavailable_since=outage.since)
        self._notices.notify("folder_back", watch=outage.watch, path=str(path))
        return True

    def after_walk(
        self, watch: WatchConfig, start: Path, unreadable: dict[Path, str], kept: Callable[[Path], int]
    ) -> None:
        """Record the folders below ``start`` a walk could not list, and end those it listed again.

        ``kept(folder)`` counts the stored files below a folder, for the log.
        """
        for folder, reason in unreadable.items():
            if self.get(folder) is None:
                self.begin(watch.name, folder, f"the folder cannot be read: {reason}", kept=kept(folder))
        for outage in self.below(start):
            if outage.path != watch.path and outage.path not in unreadable:
                self.end(outage.path)

    def get(self, path: Path) -> Outage | None:
        """The outage of exactly ``path``, if any."""
        with self._lock:
            return self._out.get(path)

    def below(self, top: Path) -> list[Outage]:
        """Outages at or below ``top``."""
        with self._lock:
            return [o for p, o in self._out.items() if p == top or top in p.parents]

    def covering(self, path: Path) -> Outage | None:
        """The outage of ``path`` or of a folder above it."""
        with self._lock:
            for above in (path, *path.parents):
                outage = self._out.get(above)
                if outage is not None:
                    return outage
        return None

    def of_source(self, watches: Iterable[WatchConfig], source: str) -> tuple[str, str] | None:
        """The reason and since of the outage covering a stored source's file, if any."""
        path = scan.path_of(list(watches), source)
        outage = self.covering(path) if path is not None else None
        return None if outage is None else (outage.reason, outage.since)

    def forget_below(self, top: Path) -> None:
        """Drop the outages at or below ``top`` silently (a folder no longer watched)."""
        with self._lock:
            for p in [p for p in self._out if p == top or top in p.parents]:
                del self._out[p]

    def to_json(self) -> list[dict[str, str]]:
        """Every outage, oldest first."""
        with self._lock:
            return [o.to_json() for o in sorted(self._out.values(), key=lambda o: o.since)]


class FolderGuard:
    """Asks whether a watch's folder can be reached before anything below it is taken as deleted."""

    def __init__(
        self, notices: Notices, sources_under: Callable[[Path], list[str]], rewatch: Callable[[Path], None]
    ) -> None:
        self.outages = Outages(notices)
        self._sources_under = sources_under
        self._rewatch = rewatch

    def root_ok(self, watch: WatchConfig, *, at_scan: bool) -> bool:
        """True when ``watch``'s folder can be reached; otherwise records the outage (once).

        ``at_scan``: a scan asks, so an empty folder while the store holds files from it counts
        as unreachable; one file's event only looks for a missing, unreadable or moved root.
        """
        root = watch.path
        stored = len(self._sources_under(root)) if at_scan else 1
        problem = root_problem(root, stored=stored, known_dev=self.outages.devices.get(root), at_scan=at_scan)
        if problem is None:
            if self.outages.end(root):
                self._rewatch(root)  # the folder there now is not the one watched before
            dev = device_of(root) if at_scan and stored else None
            if dev is not None:
                self.outages.devices[root] = dev
            return True
        if self.outages.get(root) is None:
            kept = stored if at_scan else len(self._sources_under(root))
            self.outages.begin(watch.name, root, problem, kept=kept)
            self._rewatch(root)
        return False
