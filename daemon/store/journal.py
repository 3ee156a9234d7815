"""The store's journal ``<store>.journal``: changes made durable in O(change), folded in later.

Rewriting a JSON store of a million chunks takes seconds and gigabytes; appending one file's
change to a journal takes one small write and one fsync. So a change is durable once its
record is in the journal; the JSON store catches up at the next fold (``Store.fold``), which
rewrites it atomically as before and then drops the records it holds.

Layout: the magic ``EMBDJNL1``, then records, each ``<u32 payload length><u32 crc32 of the
payload><payload>``; the payload is ``<u32 meta length><meta JSON><float32 vectors, little
endian>``. Every record has a sequence number, counted over the life of the store; the JSON
header says the last one folded into it (``journal_seq``), so a record the JSON already holds
is skipped however the journal and the JSON were left by a crash (a fold renames the new JSON
in place before it cuts the journal): nothing is applied twice. A record cut off or failing
its checksum ends the journal: it was never acknowledged as durable (a crash during its
write), so it and whatever follows are dropped, with a log line.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
import structlog

from daemon.store.entries import NewEntry
from daemon.store.format import FileState, FloatMatrix
from daemon.store.io import fsync_dir, move_aside, temp_path

log = structlog.get_logger(__name__)

MAGIC = b"EMBDJNL1"
_PREFIX = struct.Struct("<II")
_META_LEN = struct.Struct("<I")
# No record of ours comes near this; a larger length is damage (and must not make us allocate it).
_MAX_RECORD = 1 << 31

REPLACE, REMOVE, RENAME = "replace", "remove", "rename"


def journal_path(store: Path) -> Path:
    """Where the journal of ``store`` lives."""
    return store.with_name(store.name + ".journal")


def has_records(store: Path) -> bool:
    """True when ``store`` has a journal with records in it (its JSON file alone may then be behind)."""
    try:
        return journal_path(store).stat().st_size > len(MAGIC)
    except OSError:
        return False


@dataclass(frozen=True)
class Change:
    """One change to the store, as journalled: what ``replace_source``, ``remove_source`` or
    ``rename_source`` was called with."""

    seq: int
    kind: str  # REPLACE, REMOVE or RENAME
    source: str
    at: str  # ISO 8601 UTC time of the change
    state: FileState | None = None  # REPLACE and RENAME
    new: str | None = None  # RENAME's target
    entries: Sequence[NewEntry] = ()  # REPLACE


def encode(change: Change, vectors: Sequence[FloatMatrix] = ()) -> bytes:
    """The record of ``change``; ``vectors[i]`` is entry i's (checked, float32) vector."""
    meta: dict[str, Any] = {"seq": change.seq, "kind": change.kind, "source": change.source, "at": change.at}
    if change.state is not None:
        meta["state"] = change.state.to_json()
    if change.new is not None:
        meta["new"] = change.new
    if change.kind == REPLACE:
        meta["entries"] = [
            [e.content, e.page, e.chunk, e.hash, e.timestamp, e.section, e.title] for e in change.entries
        ]
    raw = orjson.dumps(meta)
    if vectors:
        matrix = np.stack(vectors).astype("<f4", copy=False)
        payload = _META_LEN.pack(len(raw)) + raw + matrix.tobytes()
    else:
        payload = _META_LEN.pack(len(raw)) + raw
    return _PREFIX.pack(len(payload), zlib.crc32(payload)) + payload


class _Bad(Exception):
    """Internal: a record's payload that passed its checksum but does not decode (another version)."""


def _decode(payload: bytes, dims: int) -> Change:
    (meta_len,) = _META_LEN.unpack_from(payload)
    meta = orjson.loads(payload[_META_LEN.size : _META_LEN.size + meta_len])
    vec_bytes = memoryview(payload)[_META_LEN.size + meta_len :]
    kind = meta["kind"]
    state = FileState.from_json(meta["state"]) if "state" in meta else None
    entries: list[NewEntry] = []
    if kind == REPLACE:
        rows = meta["entries"]
        if len(vec_bytes) != len(rows) * dims * 4:
            raise _Bad(f"{len(vec_bytes)} bytes of vectors for {len(rows)} entries of width {dims}")
        matrix = np.frombuffer(vec_bytes, dtype="<f4").reshape(len(rows), dims)
        if sys.byteorder != "little":
            matrix = matrix.astype(np.float32)
        for (content, page, chunk, hash_, timestamp, section, title), vec in zip(rows, matrix, strict=True):
            entries.append(NewEntry(content, page, chunk, hash_, vec, timestamp, section, title))
    elif kind not in (REMOVE, RENAME):
        raise _Bad(f"unknown kind {kind!r}")
    if kind != REMOVE and state is None:
        raise _Bad("no file state")
    return Change(int(meta["seq"]), kind, meta["source"], meta["at"], state, meta.get("new"), entries)


@dataclass
class Scan:
    """What reading a journal found besides its changes."""

    end: int = len(MAGIC)  # offset just past the last whole record
    dropped: int = 0  # bytes past ``end`` that were not a whole record
    reason: str = ""
    foreign: bool = False  # the file is not a journal at all


def read_changes(f: BinaryIO, dims: int, scan: Scan) -> Iterator[tuple[Change, int]]:
    """Each whole record of the journal open at ``f`` with its start offset, in order.

    Stops at the first record that is cut off or fails its checksum, and says so in ``scan``
    (filled in as the iteration goes; complete once it ends).
    """
    if f.read(len(MAGIC)) != MAGIC:
        f.seek(0, os.SEEK_END)
        scan.foreign, scan.end, scan.dropped = True, 0, f.tell()
        scan.reason = "not a journal (wrong magic)"
        return
    pos = len(MAGIC)
    while True:
        prefix = f.read(_PREFIX.size)
        if not prefix:
            break
        reason = ""
        if len(prefix) < _PREFIX.size:
            reason = "cut off in its length"
        else:
            length, crc = _PREFIX.unpack(prefix)
            payload = f.read(length) if length <= _MAX_RECORD else b""
            if length > _MAX_RECORD or len(payload) < length:
                reason = "cut off"
            elif zlib.crc32(payload) != crc:
                reason = "checksum mismatch"
            else:
                try:
                    change = _decode(payload, dims)
                except (_Bad, ValueError, KeyError, TypeError, struct.error) as exc:
                    reason = f"undecodable ({exc})"
        if reason:
            f.seek(0, os.SEEK_END)
            scan.dropped, scan.reason = f.tell() - pos, reason
            break
        yield change, pos
        pos += _PREFIX.size + length
        scan.end = pos


def log_dropped(path: Path, scan: Scan, *, reader: bool = False) -> None:
    """The log line for a journal whose tail was not whole (debug only for a reader: see ``replay``)."""
    if scan.dropped:
        (log.debug if reader else log.warning)(
            "store_journal_tail_dropped",
            path=str(path),
            bytes=scan.dropped,
            reason=scan.reason,
            detail="a change whose write a crash cut off was never acknowledged as durable; "
            "the file is indexed again if it still differs",
        )


class Journal:
    """The writer's journal file: appends records durably, cuts the tail a fold made redundant.

    Use only while holding the store's lock. Every method raises OSError when the disk refuses
    (full, read-only, I/O error); the records already durable stay as they were.
    """

    def __init__(self, path: Path, end: int, starts: list[tuple[int, int]]) -> None:
        self.path = path
        # No descriptor is kept open between writes: a file open for writing would make
        # `mount -o remount,ro` fail with EBUSY for as long as the daemon runs (see StoreLock).
        self._closed = False
        self._end = end
        # (seq, start offset) of every record in the file, in order.
        self._starts = starts

    @classmethod
    def open(cls, path: Path, starts: list[tuple[int, int]], end: int, *, foreign: bool) -> Journal:
        """Open (or create) the journal whose whole records end at ``end``; the bytes past it are cut.

        ``foreign``: the file is not a journal; it is moved aside and a new one started.
        """
        if foreign:
            moved = move_aside(path, "corrupt")
            log.warning("store_journal_foreign", path=str(path), moved_to=str(moved))
            starts, end = [], 0
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if end == 0:
                os.ftruncate(fd, 0)
                _pwrite_all(fd, MAGIC, 0)
                os.fsync(fd)
                fsync_dir(path.parent)
                end = len(MAGIC)
            elif os.fstat(fd).st_size != end:
                os.ftruncate(fd, end)
                os.fsync(fd)
        finally:
            os.close(fd)
        return cls(path, end, starts)

    @property
    def size(self) -> int:
        """Bytes of records in the journal."""
        return self._end - len(MAGIC)

    @property
    def records(self) -> int:
        """Records in the journal."""
        return len(self._starts)

    def append(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Write ``(seq, record)`` pairs after the last one and fsync: then they are durable.

        On failure the journal ends where it did (a partial write is cut, or overwritten by
        the retry, which writes the same bytes at the same place). Returns the bytes written.
        """
        self._check_open()
        data = b"".join(r for _, r in records)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            _pwrite_all(fd, data, self._end)
            os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._end)
            raise
        finally:
            os.close(fd)
        pos = self._end
        for seq, record in records:
            self._starts.append((seq, pos))
            pos += len(record)
        self._end = pos
        return len(data)

    def cut_through(self, seq: int) -> None:
        """Drop every record up to and including ``seq`` (the JSON holds them now).

        The records after it are copied into a new journal, renamed in place atomically: a
        reader holding the old file still reads a whole journal.
        """
        self._check_open()
        keep = [(s, pos) for s, pos in self._starts if s > seq]
        start = keep[0][1] if keep else self._end
        tail = b""
        if keep:
            with open(self.path, "rb") as f:
                f.seek(start)
                tail = f.read(self._end - start)
        tmp = temp_path(self.path)
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(tfd, MAGIC + tail, 0)
            os.fsync(tfd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        finally:
            os.close(tfd)
        shift = start - len(MAGIC)
        self._starts = [(s, pos - shift) for s, pos in keep]
        self._end = len(MAGIC) + len(tail)
        fsync_dir(self.path.parent)

    def close(self) -> None:
        """Refuse further writes; idempotent."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(9, "the journal is closed")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
