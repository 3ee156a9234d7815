"""The file ``<store>.ann``: the vector index's faiss graph and each label's content hash.

Layout: magic, a little-endian u32 header length, a JSON header (width, fingerprint, the
graph's build parameters, labels, the graph's byte length, a CRC-32 of everything after the
header), each label's 16-byte hash key, then the graph as faiss writes it (streamed through a
callback, never a copy in memory).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import orjson

from daemon.store.format import Fingerprint

MAGIC = b"EMBDANN1"
Keys = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class GraphParams:
    """How a graph is built. A file made with others is rebuilt: its recall is not the one
    measured for these (a sparser graph misses more), even when faiss could read it."""

    m: int  # links per node (twice as many on the bottom layer)
    ef_construction: int
    quantizer: str  # the faiss ScalarQuantizer type of the stored vectors, e.g. "8bit"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# What every file written before the header named its parameters was built with.
LEGACY = GraphParams(m=16, ef_construction=80, quantizer="8bit")


def faiss_module() -> Any:
    """faiss, imported on first use (only a store past the index's size needs it)."""
    # faiss brings its own libgomp, which reads its wait policy once, at load: passive, as
    # daemon/embed/llama.py sets it for llama.cpp's, so its idle threads never spin against
    # llama.cpp's on a loaded machine (store/ does not import embed/, hence the repetition).
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import faiss

    return faiss


def write_graph(
    f: BinaryIO, index: Any, keys: Keys, dims: int, fingerprint: Fingerprint, *, params: GraphParams
) -> None:
    """Write the faiss ``index`` (built with ``params``) and each label's hash ``keys``
    (labels, 2) to ``f``."""
    faiss = faiss_module()
    crc = 0

    def put(data: bytes) -> None:
        nonlocal crc
        crc = zlib.crc32(data, crc)
        f.write(data)

    header_at = len(MAGIC) + 4
    placeholder = orjson.dumps({"pad": " " * 1000})
    f.write(MAGIC + struct.pack("<I", len(placeholder)) + placeholder)
    put(keys.astype("<u8").tobytes())
    body_start = f.tell()
    faiss.write_index(index, faiss.PyCallbackIOWriter(put))
    header = orjson.dumps(
        {
            "dims": dims,
            "fingerprint": fingerprint.to_json(),
            "graph": params.to_json(),
            "labels": len(keys),
            "index_bytes": f.tell() - body_start,
            "crc": crc,
        }
    )
    if len(header) > len(placeholder):
        raise RuntimeError("index header too long")
    f.seek(header_at)
    f.write(header.ljust(len(placeholder)))


def read_graph(f: BinaryIO, dims: int, fingerprint: Fingerprint, *, params: GraphParams) -> tuple[Any, Keys]:
    """The index and keys ``write_graph`` wrote; ValueError (or faiss's RuntimeError) when the
    file is damaged, truncated, made for other vectors, or built with other ``params`` (told
    from the header, before the graph is read)."""
    faiss = faiss_module()
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a vector index file")
    (header_len,) = struct.unpack("<I", f.read(4))
    header = orjson.loads(f.read(header_len))
    if header["dims"] != dims or Fingerprint.from_json(header["fingerprint"]) != fingerprint:
        raise ValueError("made for another model or chunking")
    made = header.get("graph", LEGACY.to_json())
    if made != params.to_json():
        raise ValueError(f"built with other graph parameters ({made}, now {params.to_json()})")
    labels = int(header["labels"])
    raw = f.read(labels * 16)
    if len(raw) != labels * 16:
        raise ValueError("truncated")
    crc = zlib.crc32(raw)
    remaining = int(header["index_bytes"])

    def get(size: int) -> bytes:
        nonlocal crc, remaining
        data = f.read(min(size, remaining))
        remaining -= len(data)
        crc = zlib.crc32(data, crc)
        return data

    index = faiss.read_index(faiss.PyCallbackIOReader(get))
    if remaining or f.read(1) or crc != header["crc"]:
        raise ValueError("checksum mismatch")
    if index.ntotal != labels or index.d != dims:
        raise ValueError("its size does not match its header")
    keys = np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(labels, 2)
    return index, keys
