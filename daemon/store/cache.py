"""The sidecar cache ``<store>.idx``: the parsed entries of one exact version of the JSON store.

Parsing half a gigabyte of JSON numbers takes seconds; reading the same vectors as raw float32
takes a fraction of one. The JSON stays the source of truth: the cache records the stat
signature (size, mtime_ns, inode) and checksums of the first and last bytes of the JSON it
was made from, plus a checksum of its own payload, and is ignored whenever any of them
differ. It is written after the JSON is durable and never fsynced: losing it costs one slow
start, never data.

Layout (format 2): magic, a little-endian u32 header length and a JSON header (the JSON's
signature, count, dimensions); then the float32 matrix, an int64 (count, 4) array of span
offset, span length, chunk and timestamp, an int32 (count, 3) array of codes for source,
section and title into one table of distinct strings (-1: none), an orjson object with that
table, the keyword index's signature of each source's rows (the sources are the table's first
strings; a cache without them is signed from its columns), the pages and the (rare) foreign
metadata; then ids, hashes and contents, each as one
UTF-8 buffer followed by its int64 offsets; last a JSON trailer (each part's length and a
xxh3-64 hash of everything between header and trailer), its u32 length and an end mark. The texts
are not read at open, only checked: rows read them from the file when they are needed
(``daemon.store.texts``). A cache of format 1 is not used (the JSON is parsed once and a new
cache written).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import orjson
import structlog
import xxhash

from daemon.store.format import Columns, Extra
from daemon.store.io import temp_path
from daemon.store.lazy import source_signatures
from daemon.store.texts import OffsetArray, Texts, write_texts

log = structlog.get_logger(__name__)

MAGIC = b"EMBDIDX2"
END = b"EMBDEND2"
_CHUNK = 8 << 20  # bytes read at a time when only checking
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


def write_cache(store: Path, sig: JsonSignature, cols: Columns) -> Texts | None:
    """Write the cache of the JSON version ``sig``; a failure only logs (the cache is optional).

    Returns the texts as written, read from the new file (``daemon.store.texts``), so the
    rows can let go of any they hold in memory; None when nothing was written.
    """
    path = cache_path(store)
    tmp = temp_path(path)
    if cols.spans is None or sys.byteorder != "little":
        _remove(path)
        return None
    try:
        with open(tmp, "wb") as f:
            start, offsets = _write(f, sig, cols)
        # Read-only, so the descriptor the texts keep never stops a remount read-only; opened
        # before the rename, so it is this file whatever happens to the name afterwards.
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            tmp.replace(path)
            return Texts.in_file(fd, start, offsets)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("store_cache_write_failed", path=str(path), reason=str(exc))
        _remove(tmp)
        _remove(path)
        return None


def _write(f: BinaryIO, sig: JsonSignature, cols: Columns) -> tuple[int, OffsetArray]:
    """Write the cache; returns where the contents' bytes start and their offsets."""
    n = len(cols)
    assert cols.spans is not None
    header = orjson.dumps({"json": asdict(sig), "count": n, "dimensions": int(cols.matrix.shape[1])})
    f.write(MAGIC + struct.pack("<I", len(header)) + header)
    ints = np.empty((n, _INTS), dtype=np.int64)
    ints[:, :2] = cols.spans[:n]
    ints[:, 2] = cols.chunks
    ints[:, 3] = cols.timestamps
    strings: dict[str, int] = {}
    codes = np.empty((n, 3), dtype=np.int32)
    columns: tuple[Sequence[str | None], ...] = (cols.sources, cols.sections, cols.titles)
    for col, values in enumerate(columns):
        codes[:, col] = [-1 if v is None else strings.setdefault(v, len(strings)) for v in values]
        if col == 0:  # the sources are the first strings: their rows' keyword signatures
            signatures = source_signatures(cols, codes[:, 0], len(strings))
    meta = orjson.dumps(
        {
            "strings": list(strings),
            "signatures": signatures,
            "pages": cols.pages,
            "extras": {str(i): e for i, e in enumerate(cols.extras) if e is not None},
        }
    )
    lengths: dict[str, int] = {}
    digest = xxhash.xxh3_64()

    def out(data: bytes | memoryview) -> None:
        f.write(data)
        digest.update(data)

    for name, data in (
        ("matrix", np.ascontiguousarray(cols.matrix[:n], dtype=np.float32).data),
        ("ints", ints.data),
        ("codes", codes.data),
        ("meta", memoryview(meta)),
    ):
        out(data)
        lengths[name] = data.nbytes
    start = 0
    for name, column in (("ids", cols.ids), ("hashes", cols.hashes), ("contents", cols.contents)):
        start = f.tell()
        offsets = write_texts(out, column)
        out(offsets.data)
        lengths[name] = int(offsets[-1])
    trailer = orjson.dumps({"lengths": lengths, "xxh3": digest.intdigest()})
    f.write(trailer + struct.pack("<I", len(trailer)) + END)
    return start, offsets  # the contents' (written last)


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
    size = os.fstat(f.fileno()).st_size
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        older = magic[:-1] == MAGIC[:-1]
        raise _Unusable("made by an older embedd (another layout)" if older else "not a cache file")
    (header_len,) = struct.unpack("<I", f.read(4))
    header = orjson.loads(f.read(header_len))
    if header["json"] != asdict(sig):
        raise _Unusable("made from another version of the store")
    n, width = int(header["count"]), int(header["dimensions"])
    if width != dims or sys.byteorder != "little":
        raise _Unusable("dimensions differ")
    payload_at = f.tell()
    f.seek(size - 4 - len(END))
    (trailer_len,) = struct.unpack("<I", f.read(4))
    if f.read(len(END)) != END:
        raise _Unusable("truncated")
    f.seek(size - 4 - len(END) - trailer_len)
    trailer = orjson.loads(f.read(trailer_len))
    lengths = {k: int(v) for k, v in trailer["lengths"].items()}
    fixed = {"matrix": n * dims * 4, "ints": n * _INTS * 8, "codes": n * 3 * 4}
    texts = ("ids", "hashes", "contents")
    payload = sum(fixed.values()) + lengths["meta"] + sum(lengths[t] + (n + 1) * 8 for t in texts)
    if n < 0 or any(lengths[k] != v for k, v in fixed.items()) or min(lengths.values()) < 0:
        raise _Unusable("its header and trailer disagree")
    if payload_at + payload + trailer_len + 4 + len(END) != size:
        raise _Unusable("its size does not match its header")  # checked before allocating
    f.seek(payload_at)
    # Headroom lets the store append without copying the matrix; untouched rows cost no RAM.
    matrix = np.empty((n + n // 8 + 64, dims), dtype=np.float32)
    ints = np.empty((n, _INTS), dtype=np.int64)
    codes = np.empty((n, 3), dtype=np.int32)
    digest = xxhash.xxh3_64()
    for array in (matrix[:n], ints, codes):
        _read_into(f, array, digest)
    meta_bytes = f.read(lengths["meta"])
    digest.update(meta_bytes)
    blobs: dict[str, bytes] = {}
    offsets: dict[str, OffsetArray] = {}
    contents_at = 0
    for name in texts:
        if name == "contents":
            # Only checked here; read later, a text at a time, from the file.
            contents_at = f.tell()
            _hash_next(f, lengths[name], digest)
        else:
            blobs[name] = f.read(lengths[name])
            digest.update(blobs[name])
        offsets[name] = np.empty(n + 1, dtype=np.int64)
        _read_into(f, offsets[name], digest)
        o = offsets[name]
        if o[0] != 0 or o[-1] != lengths[name] or (n and bool((np.diff(o) < 0).any())):
            raise _Unusable("damaged text offsets")
    if digest.intdigest() != trailer["xxh3"]:
        raise _Unusable("checksum mismatch")
    meta = orjson.loads(meta_bytes)
    strings: list[str] = meta["strings"]
    if n and (int(codes.min()) < -1 or int(codes.max()) >= len(strings)):
        raise _Unusable("damaged string codes")
    table: list[str | None] = [*strings, None]  # code -1 is None
    sources_in_table = int(codes[:, 0].max()) + 1 if n else 0
    sources, sections, titles = ([table[c] for c in codes[:, col].tolist()] for col in range(3))
    extras: list[Extra | None] = [None] * n
    for row, extra in meta["extras"].items():
        extras[int(row)] = extra
    cols = Columns(
        ids=Texts.in_memory(blobs["ids"], offsets["ids"]),
        contents=Texts.in_file(f.fileno(), contents_at, offsets["contents"]),
        sources=sources,
        pages=meta["pages"],
        chunks=ints[:, 2].tolist(),
        hashes=Texts.in_memory(blobs["hashes"], offsets["hashes"]),
        timestamps=ints[:, 3].tolist(),
        extras=extras,
        sections=sections,
        titles=titles,
        matrix=matrix,
        spans=np.ascontiguousarray(ints[:, :2]),
        # The writer codes the sources first, so theirs are the table's first strings.
        source_codes=(np.ascontiguousarray(codes[:, 0]), tuple(strings[:sources_in_table])),
        signatures=_signatures(meta, sources_in_table),
    )
    if len(cols.pages) != n or None in cols.sources:
        raise _Unusable("columns of different lengths")
    return cols


def _signatures(meta: dict[str, Any], count: int) -> list[str] | None:
    """The sources' keyword signatures the cache recorded (an older writer recorded none)."""
    found = meta.get("signatures")
    if not isinstance(found, list) or len(found) != count:
        return None
    return found


def _read_into(f: BufferedReader, array: npt.NDArray[Any], digest: xxhash.xxh3_64) -> None:
    """Fill ``array`` from ``f``, hashing what was read into ``digest``."""
    if not array.nbytes:
        return  # (memoryview refuses to cast an empty 2-D view, and there is nothing to read)
    view = array.data.cast("B")
    if f.readinto(view) != array.nbytes:
        raise _Unusable("truncated")
    digest.update(view)


def _hash_next(f: BufferedReader, length: int, digest: xxhash.xxh3_64) -> None:
    """Hash the next ``length`` bytes of ``f`` into ``digest``, read through a small buffer."""
    buf = bytearray(min(length, _CHUNK) or 1)
    view = memoryview(buf)
    left = length
    while left:
        got = f.readinto(view[: min(left, len(buf))])
        if not got:
            raise _Unusable("truncated")
        digest.update(view[:got])
        left -= got


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
