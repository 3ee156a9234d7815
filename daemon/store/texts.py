"""Chunk texts kept out of Python objects: one UTF-8 buffer and an offsets array.

A million chunks of about 500 characters are half a gigabyte of text. Held as Python strings
they cost that and 50 bytes more each, and building them is most of what opening the store
used to cost. ``Texts`` leaves the bytes where the sidecar cache (``daemon.store.cache``) has
them and reads a text (``pread``) only when somebody needs it: a search hit, a new row of
the keyword index, an entry written out as JSON. The page cache holds what is read often;
none of it counts against the daemon's memory.

The cache file is never changed in place (it is replaced by a rename), so an open descriptor
of it keeps reading the same bytes for as long as it is held, even once a newer cache has
replaced the file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import overload

import numpy as np
import numpy.typing as npt

OffsetArray = npt.NDArray[np.int64]


class Texts(Sequence[str]):
    """Strings stored as one UTF-8 buffer: text i is bytes ``offsets[i]:offsets[i + 1]`` of it.

    The buffer is bytes in memory (``of``) or a region of an open file (``in_file``), whose
    descriptor the Texts owns: ``close`` releases it (so does garbage collection).
    """

    __slots__ = ("_ascii", "_buf", "_fd", "_file_offset", "_offsets")

    def __init__(
        self, offsets: OffsetArray, *, buf: bytes = b"", fd: int | None = None, file_offset: int = 0
    ) -> None:
        self._offsets = offsets
        self._buf = buf
        self._fd = fd
        self._file_offset = file_offset
        # The buffer decoded, when it is ASCII (ids and hashes): a string is then one slice.
        self._ascii: str | None = None

    @classmethod
    def in_memory(cls, buf: bytes, offsets: OffsetArray) -> Texts:
        """Texts cut from ``buf`` at ``offsets``, decoded one at a time when read."""
        text = buf.decode()
        if len(text) != len(buf):
            return cls(offsets, buf=buf)
        texts = cls(offsets)  # the decoded copy alone: the bytes are not kept twice
        texts._ascii = text
        return texts

    @classmethod
    def of(cls, strings: Sequence[str]) -> Texts:
        """Texts holding ``strings`` in memory."""
        encoded = [s.encode() for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(offsets, buf=b"".join(encoded))

    @classmethod
    def in_file(cls, fd: int, start: int, offsets: OffsetArray) -> Texts:
        """Texts whose buffer starts at byte ``start`` of the open file ``fd``.

        Takes a duplicate of ``fd``; the caller keeps its own.
        """
        return cls(offsets, fd=os.dup(fd), file_offset=start)

    def close(self) -> None:
        """Release the file; reading afterwards raises ValueError. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._file_offset = -1

    def __del__(self) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, length = self.span(i)
        if self._ascii is not None:
            return self._ascii[start : start + length]
        return self.read(start, length).decode()

    def __iter__(self) -> Iterator[str]:
        if self._ascii is not None:
            text = self._ascii
            return (text[a:b] for a, b in itertools.pairwise(self._offsets.tolist()))
        return (self[i] for i in range(len(self)))

    def span(self, i: int) -> tuple[int, int]:
        """Where text i's bytes are in the buffer: (offset, length)."""
        start = int(self._offsets[i])
        return start, int(self._offsets[i + 1]) - start

    def read(self, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of the buffer."""
        if self._file_offset < 0:
            raise ValueError("the texts were closed (their store is closed)")
        if self._ascii is not None:
            return self._ascii[start : start + length].encode()
        if self._fd is None:
            return self._buf[start : start + length]
        data = os.pread(self._fd, length, self._file_offset + start)
        if len(data) != length:
            raise OSError(f"a text ends early in its file ({len(data)} of {length} bytes)")
        return data


TextRef = str | tuple[Texts, int]
"""A row's text: a string of its own, or text i of a ``Texts``."""

_RUN_BYTES = 8 << 20  # the most one copy of consecutive texts of a file reads at once


def text_of(ref: TextRef) -> str:
    """The text ``ref`` stands for."""
    if isinstance(ref, str):
        return ref
    texts, i = ref
    return texts[i]


def write_texts(write: Callable[[bytes], object], refs: Iterable[TextRef]) -> OffsetArray:
    """Write the texts of ``refs`` one after another through ``write``, as UTF-8.

    Consecutive texts of one ``Texts`` are copied as one run of bytes, not decoded and
    encoded again. Returns the offsets of the texts written (one more than there are texts).
    """
    lengths: list[int] = []
    run: Texts | None = None
    run_start = run_len = 0
    for ref in refs:
        if isinstance(ref, str):
            if run is not None:
                write(run.read(run_start, run_len))
                run = None
            data = ref.encode()
            write(data)
            lengths.append(len(data))
            continue
        texts, i = ref
        start, length = texts.span(i)
        if texts is not run or start != run_start + run_len or run_len + length > _RUN_BYTES:
            if run is not None:
                write(run.read(run_start, run_len))
            run, run_start, run_len = texts, start, 0
        run_len += length
        lengths.append(length)
    if run is not None:
        write(run.read(run_start, run_len))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets
