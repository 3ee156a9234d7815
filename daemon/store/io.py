"""Durable file operations for the store: the lock, atomic writes that splice old bytes, moves aside.

Writes follow litestream: ``name.tmp`` in the same folder, fsync, rename over the target,
fsync the folder; the temp is removed on any error so the old file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import structlog

from daemon.errors import StoreLockedError

log = structlog.get_logger(__name__)

_BUFFER = 4 << 20  # serialised bytes collected before one write call
_COPY_BLOCK = 1 << 20
# copy_file_range refuses some file systems and kernels; these mean "copy by hand instead".
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def temp_path(path: Path) -> Path:
    """Where the next version of ``path`` is written before it is renamed over it."""
    return path.with_name(path.name + ".tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(*paths: Path) -> None:
    """Delete the temps a crash left beside ``paths``; call only while holding the lock."""
    for path in paths:
        tmp = temp_path(path)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            log.warning("store_stale_temp_removed", path=str(tmp))


def move_aside(path: Path, kind: str) -> Path:
    """Rename ``path`` to ``<name>.<kind>-<UTC timestamp>`` durably; returns the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{kind}-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{kind}-{stamp}-{n}")
        n += 1
    path.rename(target)
    fsync_dir(path.parent)
    return target


class StoreLock:
    """An exclusive ``flock`` on ``<store>.lock``, held for the life of the writer."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> StoreLock:
        """Take the lock without waiting; raises StoreLockedError naming the lock and its holder.

        Raises OSError when the lock file cannot be created or written (a read-only folder).
        """
        # The held descriptor is read-only (flock does not need more): a file open for writing
        # would make `mount -o remount,ro` of the store's file system fail with EBUSY for as
        # long as the daemon runs, and saves could never fail over to "read-only, retry later".
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise StoreLockedError(
                f"store is in use: {who} holds the lock {path}; stop that embedd first "
                "(read-only commands such as search and status work while it runs)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            # The pid is for the error message of the next opener only; the flock is the lock.
            # Writing it also proves the folder is writable before any work starts.
            _write_pid(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock up; idempotent. The lock file stays (unlinking it would race)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_pid(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class AtomicWriter:
    """Builds the next version of a file in ``<name>.tmp`` from new bytes and ranges of an old file.

    Ranges are copied with ``os.copy_file_range`` so spliced bytes never pass through Python.
    Use as a context manager: leaving it without ``commit`` removes the temp.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = temp_path(target)
        self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._buf: list[bytes] = []
        self._buffered = 0
        self._flushed = 0
        self.bytes_written = 0
        self.bytes_copied = 0

    @property
    def position(self) -> int:
        """Offset in the new file where the next byte goes."""
        return self._flushed + self._buffered

    def write(self, data: bytes) -> None:
        """Append new bytes."""
        self._buf.append(data)
        self._buffered += len(data)
        self.bytes_written += len(data)
        if self._buffered >= _BUFFER:
            self._flush()

    def copy(self, src_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of ``src_fd`` starting at ``offset``."""
        self._flush()
        fd = self._require_fd()
        done = 0
        use_range = hasattr(os, "copy_file_range")  # Linux only
        while done < length:
            if use_range:
                try:
                    n = os.copy_file_range(src_fd, fd, length - done, offset + done, self._flushed)
                except OSError as exc:
                    if exc.errno not in _NO_COPY_RANGE:
                        raise
                    use_range = False
                    continue
            else:
                block = os.pread(src_fd, min(_COPY_BLOCK, length - done), offset + done)
                n = _pwrite_all(fd, block, self._flushed) if block else 0
            if n == 0:
                raise OSError(errno.EIO, f"the old store ended {length - done} bytes early")
            done += n
            self._flushed += n
        self.bytes_copied += length

    def commit(self) -> os.stat_result:
        """Flush, fsync, rename over the target and fsync the folder; returns the new file's stat."""
        self._flush()
        fd = self._require_fd()
        os.fsync(fd)
        st = os.fstat(fd)
        os.close(fd)
        self._fd = None
        self.tmp.replace(self.target)
        fsync_dir(self.target.parent)
        return st

    def abort(self) -> None:
        """Drop the temp; the target is untouched. Idempotent."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or self._fd is not None:
            self.abort()

    def _flush(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._buffered = 0
        self._flushed += _pwrite_all(self._require_fd(), data, self._flushed)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, "the writer is closed")
        return self._fd


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


@contextlib.contextmanager
def gc_paused() -> Iterator[GcPause]:
    """Hold off the cyclic GC while building or walking 100,000s of objects.

    Each collection would walk every entry already held; a bulk load triggers dozens and
    more than doubles its time. Nothing built here is cyclic garbage. Setting the yielded
    pause's ``freeze`` moves what was built out of the collector's sight at the end.
    """
    pause = GcPause()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield pause
    finally:
        if pause.freeze:
            gc.freeze()
        if enabled:
            gc.enable()


@dataclass
class GcPause:
    """What ``gc_paused`` does at its end.

    ``freeze``: call ``gc.freeze()``, for what lives as long as the process, such as a large
    store's records. A full collection walking a million of them stalls every thread for a
    third of a second, right after the open and then every so often. (Freezing also keeps
    any cyclic garbage of that moment for good, so it is for large stores only.)
    """

    freeze: bool = False


FREEZE_ABOVE_ROWS = 100_000
"""A store opened with at least this many entries has its records frozen (``GcPause``)."""
