"""The sidecar cache ``<store>.idx``: the parsed entries of one exact version of the JSON store.

Parsing half a gigabyte of JSON numbers takes seconds; reading the same vectors as raw float32
takes a fraction of one. The JSON stays the source of truth: the cache records the stat
signature (size, mtime_ns, inode) and checksums of the first and last bytes of the JSON it
was made from, plus a checksum of its own payload, and is ignored whenever any of them
differ. It is written after the JSON is durable and never fsynced: losing it costs one slow
start, never data.

Layout: magic, a little-endian u32 header length, a JSON header, then the payload: the
float32 matrix, an int64 (count, 4) array of span offset, span length, chunk and timestamp,
and an orjson object of the string columns (a cache without the ``sections`` and ``titles``
columns was made before they existed and is not used).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from io import BufferedReader
from pathlib import Path

import numpy as np
import orjson
import structlog

from daemon.store.format import Columns
from daemon.store.io import temp_path

log = structlog.get_logger(__name__)

MAGIC = b"EMBDIDX1"
_TAIL = 64 << 10
_INTS = 4


def cache_path(store: Path) -> Path:
    """Where the cache of ``store`` lives."""
    return store.with_name(store.name + ".idx")


@dataclass(frozen=True)
class JsonSignature:
    """Identifies one version of the JSON file cheaply, without reading all of it."""

    size: int
    mtime_ns: int
    inode: int
    head_crc: int
    tail_crc: int

    @classmethod
    def of(cls, fd: int, st: os.stat_result, header_line: bytes) -> JsonSignature:
        """Signature of the open JSON file ``fd`` whose first line is ``header_line``."""
        tail_len = min(_TAIL, st.st_size)
        tail = os.pread(fd, tail_len, st.st_size - tail_len)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, zlib.crc32(header_line), zlib.crc32(tail))


def write_cache(store: Path, sig: JsonSignature, cols: Columns) -> None:
    """Write the cache of the JSON version ``sig``; a failure only logs (the cache is optional)."""
    path = cache_path(store)
    tmp = temp_path(path)
    if cols.spans is None or sys.byteorder != "little":
        _remove(path)
        return
    n = len(cols)
    matrix = np.ascontiguousarray(cols.matrix[:n], dtype=np.float32)
    ints = np.empty((n, _INTS), dtype=np.int64)
    ints[:, :2] = cols.spans
    ints[:, 2] = cols.chunks
    ints[:, 3] = cols.timestamps
    meta = orjson.dumps(
        {
            "ids": cols.ids,
            "contents": cols.contents,
            "sources": cols.sources,
            "hashes": cols.hashes,
            "pages": cols.pages,
            "extras": cols.extras,
            "sections": cols.sections,
            "titles": cols.titles,
        }
    )
    crc = zlib.crc32(meta, zlib.crc32(ints.data, zlib.crc32(matrix.data)))
    header = orjson.dumps(
        {"json": asdict(sig), "count": n, "dimensions": matrix.shape[1], "meta_len": len(meta), "crc": crc}
    )
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.write(matrix.data)
            f.write(ints.data)
            f.write(meta)
        tmp.replace(path)
    except OSError as exc:
        log.warning("store_cache_write_failed", path=str(path), reason=str(exc))
        _remove(tmp)
        _remove(path)


def read_cache(store: Path, sig: JsonSignature, dims: int) -> Columns | None:
    """The entries cached for JSON version ``sig``, or None when missing, stale or damaged."""
    path = cache_path(store)
    try:
        with open(path, "rb") as f:
            return _read(f, sig, dims)
    except FileNotFoundError:
        reason = "missing"
    except _Unusable as exc:
        reason = str(exc)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        reason = f"unreadable: {exc}"
    log.info("store_cache_unused", path=str(path), reason=reason)
    return None


def remove_cache(store: Path) -> None:
    """Delete the cache of ``store`` (it is stale once the JSON moves)."""
    _remove(cache_path(store))


class _Unusable(Exception):
    """Internal: why a cache file cannot stand in for the JSON."""


def _read(f: BufferedReader, sig: JsonSignature, dims: int) -> Columns:
    if f.read(len(MAGIC)) != MAGIC:
        raise _Unusable("not a cache file")
    (header_len,) = struct.unpack("<I", f.read(4))
    header = orjson.loads(f.read(header_len))
    if header["json"] != asdict(sig):
        raise _Unusable("made from another version of the store")
    n, width, meta_len = int(header["count"]), int(header["dimensions"]), int(header["meta_len"])
    if width != dims or sys.byteorder != "little":
        raise _Unusable("dimensions differ")
    payload = n * (dims * 4 + _INTS * 8) + meta_len
    if n < 0 or meta_len < 0 or f.tell() + payload != os.fstat(f.fileno()).st_size:
        raise _Unusable("its size does not match its header")  # checked before allocating
    # Headroom lets the store append without copying the matrix; untouched rows cost no RAM.
    matrix = np.empty((n + n // 8 + 64, dims), dtype=np.float32)
    ints = np.empty((n, _INTS), dtype=np.int64)
    for array in (matrix[:n].data, ints.data):
        # (memoryview refuses to cast an empty 2-D view, and there is nothing to read.)
        if array.nbytes and f.readinto(array.cast("B")) != array.nbytes:
            raise _Unusable("truncated")
    meta_bytes = f.read(meta_len)
    if len(meta_bytes) != meta_len:
        raise _Unusable("truncated")
    if zlib.crc32(meta_bytes, zlib.crc32(ints.data, zlib.crc32(matrix[:n].data))) != header["crc"]:
        raise _Unusable("checksum mismatch")
    meta = orjson.loads(meta_bytes)
    if "sections" not in meta or "titles" not in meta:
        raise _Unusable("made by an older embedd (no sections)")
    interned: dict[str, str] = {}
    cols = Columns(
        ids=meta["ids"],
        contents=meta["contents"],
        sources=[interned.setdefault(s, s) for s in meta["sources"]],
        pages=meta["pages"],
        chunks=ints[:, 2].tolist(),
        hashes=meta["hashes"],
        timestamps=ints[:, 3].tolist(),
        extras=meta["extras"],
        sections=[s if s is None else interned.setdefault(s, s) for s in meta["sections"]],
        titles=[t if t is None else interned.setdefault(t, t) for t in meta["titles"]],
        matrix=matrix,
        spans=np.ascontiguousarray(ints[:, :2]),
    )
    columns = (cols.ids, cols.contents, cols.sources, cols.hashes, cols.pages, cols.extras)
    if not all(len(column) == n for column in (*columns, cols.sections, cols.titles)):
        raise _Unusable("columns of different lengths")
    return cols


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
