"""Reading a GGUF file's header: its metadata and where its tensor data ends.

llama.cpp reports a bad file only through its log (or by aborting), so every start checks the
file here first and the user gets a message naming the file and the reason. Only the header is
read, value by value, with ``struct``: arrays of numbers are skipped, not decoded, so the check
costs milliseconds where gguf-py's reader (which maps and decodes every field) took about a
second.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from daemon.errors import ModelError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# A key or string longer than this is no header we could have written: the file is damaged.
MAX_STRING = 1 << 24

Scalar = int | float | bool | str

# GGUF value types: (struct format, size) of the fixed-size ones.
_FIXED: Mapping[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING = 8
_ARRAY = 9

# ggml tensor types: (elements per block, bytes per block), as in ggml.c's type traits.
BLOCK_SIZES: Mapping[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
}


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF header says: scalar metadata (arrays are skipped) and the tensors' extent."""

    version: int
    metadata: Mapping[str, Scalar]
    tensors: int
    data_offset: int  # where tensor data starts
    data_end: int  # where the last tensor's data ends (as far as its type is known)

    def get_int(self, key: str, default: int) -> int:
        """An integer metadata value, or ``default`` when absent or not an integer."""
        value = self.metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def get_str(self, key: str, default: str = "") -> str:
        """A string metadata value, or ``default``."""
        value = self.metadata.get(key)
        return value if isinstance(value, str) else default


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def take(self, n: int) -> bytes:
        data = self._fh.read(n)
        if len(data) != n:
            raise _Truncated
        return data

    def unpack(self, fmt: str, size: int) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(size))[0]
        return value

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string(self) -> str:
        n = self.u64()
        if n > MAX_STRING:
            raise ValueError(f"a string of {n} bytes in the header")
        return self.take(n).decode("utf-8", "replace")

    def skip(self, n: int) -> None:
        self._fh.seek(n, 1)

    def value(self, kind: int) -> Scalar | None:
        """A value of type ``kind``; arrays are skipped and give None."""
        if kind in _FIXED:
            fmt, size = _FIXED[kind]
            return self.unpack(fmt, size)
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.u32(), self.u64()
            if item in _FIXED:
                self.skip(_FIXED[item][1] * count)
            elif item == _STRING:
                for _ in range(count):
                    self.skip(self.u64())
            else:
                raise ValueError(f"an array of value type {item}")
            return None
        raise ValueError(f"unknown value type {kind}")


def read_header(path: Path) -> GGUFHeader:
    """Parse ``path``'s GGUF header; raises ModelError naming the file and what is wrong."""
    try:
        size = path.stat().st_size
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below, once errors are mapped
    except FileNotFoundError as exc:
        raise ModelError(
            path, "file not found; build the default model with `embedd model build` or set [model] path"
        ) from exc
    except OSError as exc:
        raise ModelError(path, f"cannot read: {exc.strerror or exc}") from exc
    with fh:
        if fh.read(4) != MAGIC:
            raise ModelError(path, "not a GGUF file (bad magic bytes)")
        r = _Reader(fh)
        try:
            version, n_tensors, n_kv = r.u32(), r.u64(), r.u64()
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old for llama.cpp")
            metadata: dict[str, Scalar] = {}
            for _ in range(n_kv):
                key = r.string()
                value = r.value(r.u32())
                if value is not None:
                    metadata[key] = value
            extents: list[tuple[int, int]] = []
            for _ in range(n_tensors):
                r.string()
                dims = [r.u64() for _ in range(r.u32())]
                kind, offset = r.u32(), r.u64()
                elements = 1
                for d in dims:
                    elements *= d
                block, nbytes = BLOCK_SIZES.get(kind, (1, 0))  # unknown type: check its offset only
                extents.append((offset, elements // block * nbytes))
            alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0:
                raise ValueError(f"general.alignment is {alignment!r}")
            data_offset = -(-fh.tell() // alignment) * alignment
        except _Truncated:
            raise ModelError(path, f"truncated GGUF file ({size} bytes end inside the header)") from None
        except (ValueError, struct.error, OverflowError) as exc:
            raise ModelError(path, f"corrupt GGUF header: {exc}") from exc
    end = data_offset + max((o + n for o, n in extents), default=0)
    return GGUFHeader(version, metadata, n_tensors, data_offset, end)


def check_gguf(path: Path) -> GGUFHeader:
    """Raise ModelError unless ``path`` is a complete GGUF file holding tensors; returns its header."""
    header = read_header(path)
    size = path.stat().st_size
    if header.tensors == 0:
        raise ModelError(path, "the GGUF file holds no tensors")
    if header.data_end > size:
        raise ModelError(path, f"truncated GGUF file ({size} bytes, tensor data needs {header.data_end})")
    return header
