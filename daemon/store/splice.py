"""Writing a store's entries, copying runs of unchanged ones from the previous file.

An entry whose bytes are in the previous file as they are now (its span is known) is not
serialised again: consecutive such entries form a run, copied in one call (in the kernel,
by ``AtomicWriter.copy``) whatever its length. Only changed entries are encoded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from daemon.store.entries import Row
from daemon.store.format import (
    CLOSE,
    NEWLINE,
    SEP,
    FloatMatrix,
    SpanArray,
    encode_entry,
)
from daemon.store.io import AtomicWriter


def write_spliced(
    w: AtomicWriter,
    head: bytes,
    rows: Sequence[Row],
    vectors: FloatMatrix,
    *,
    old: SpanArray | None,
    src_fd: int | None,
) -> tuple[SpanArray, int]:
    """Write ``head`` and every row to ``w``; row i's vector is ``vectors[i]``.

    ``old[i]`` is (offset, length) of row i's bytes in the file open at ``src_fd``, offset -1
    when the row must be serialised anew; ``old`` None (or no ``src_fd``) serialises all.
    Returns the rows' spans in the new file and how many rows were copied.
    """
    n = len(rows)
    if old is None or src_fd is None:
        old = np.full((n, 2), -1, dtype=np.int64)
    src = src_fd if src_fd is not None else -1
    reuse = old[:, 0] >= 0
    # Entry i continues a run when the old file holds it right after entry i-1, separator
    # included: a run is then one copy, whatever its length.
    cont = np.zeros(n, dtype=bool)
    cont[1:] = reuse[1:] & reuse[:-1] & (old[1:, 0] == old[:-1, 0] + old[:-1, 1] + len(SEP))
    starts = np.flatnonzero(~cont).tolist()
    new = old.copy()
    w.write(head)
    for k, i in enumerate(starts):
        if i:
            w.write(SEP)
        if reuse[i]:
            j = starts[k + 1] if k + 1 < len(starts) else n  # the run is rows i..j-1
            src_start = int(old[i, 0])
            src_end = int(old[j - 1, 0] + old[j - 1, 1])
            new[i:j, 0] = old[i:j, 0] - src_start + w.position
            w.copy(src, src_start, src_end - src_start)
            continue
        r = rows[i]
        data = encode_entry(
            r.id,
            content=r.content,
            source=r.source,
            page=r.page,
            chunk=r.chunk,
            hash_=r.hash,
            extra=r.extra,
            vector=vectors[i],
            timestamp=r.timestamp,
            section=r.section,
            title=r.title,
        )
        new[i] = (w.position, len(data))
        w.write(data)
    if n:
        w.write(NEWLINE)
    w.write(CLOSE)
    return new, int(reuse.sum())
