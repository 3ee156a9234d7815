"""The llama.cpp calls behind one embedding batch, through llama.h's own C functions.

``Llama.embed`` tokenizes every text again, copies each vector into a Python list and runs
all its batches in one call. Here the embedder hands over token ids it has already checked,
each native batch is one ``decode`` that can be timed (the thread count follows those
timings) and the pooled vectors are copied straight into a float32 matrix. The packing is
``Llama.embed``'s: sequences in input order, a new batch when the next one would pass
``n_batch`` tokens or ``n_seq_max`` sequences; a test holds the vectors equal to its.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import numpy.typing as npt

from daemon.embed.pool import ThreadPools
from daemon.errors import EmbedError

FloatMatrix = npt.NDArray[np.float32]
# Called after each native batch with its token count and its seconds in llama.cpp.
BatchTimer = Callable[[int, float], None]


def pack(lengths: Sequence[int], n_batch: int, n_seq_max: int) -> list[range]:
    """Consecutive index ranges of ``lengths`` that each fit one native batch.

    Every length must be between 1 and ``n_batch`` (the caller checks: llama.cpp aborts the
    process on a batch over n_ubatch rather than returning an error).
    """
    groups: list[range] = []
    start = tokens = 0
    for i, n in enumerate(lengths):
        if not 1 <= n <= n_batch:
            raise ValueError(f"sequence {i} has {n} tokens; a batch holds 1 to {n_batch}")
        if i > start and (tokens + n > n_batch or i - start >= n_seq_max):
            groups.append(range(start, i))
            start, tokens = i, 0
        tokens += n
    if len(lengths) > start:
        groups.append(range(start, len(lengths)))
    return groups


class NativeBatcher:
    """Owns one ``llama_batch`` for a context and turns token lists into pooled vectors.

    Not thread-safe (neither is the context): the embedder serialises calls.
    """

    def __init__(
        self,
        llama_cpp: ModuleType,
        ctx: ctypes.c_void_p,
        n_embd: int,
        *,
        pools: ThreadPools | None = None,
    ) -> None:
        """``pools``: ggml's thread pools to run batches on (a llama.cpp built without OpenMP)."""
        self._lib = llama_cpp
        self._ctx = ctx
        self.n_embd = n_embd
        self.n_batch = int(llama_cpp.llama_n_batch(ctx))
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(ctx))
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, self.n_seq_max)
        self._threads = int(llama_cpp.llama_n_threads_batch(ctx))
        self._pools = pools
        if pools is not None:
            pools.use(self._threads)
        self._closed = False

    @property
    def threads(self) -> int:
        """The thread count the context runs batches on."""
        return self._threads

    @property
    def pool_threads(self) -> int | None:
        """The thread count of the ggml pool attached now; None without pools of our own."""
        return self._pools.attached if self._pools is not None else None

    def context_threads(self) -> int:
        """The batch thread count as llama.cpp itself reports it."""
        return int(self._lib.llama_n_threads_batch(self._ctx))

    def set_threads(self, threads: int) -> None:
        """Run the next batches on ``threads`` threads; the context stays loaded."""
        if threads != self._threads:
            # Single-token batches use the first value, longer ones the second: set both.
            self._lib.llama_set_n_threads(self._ctx, threads, threads)
            if self._pools is not None:
                self._pools.use(threads)
            self._threads = threads

    def embed(
        self,
        token_lists: Sequence[Sequence[int]],
        *,
        threads: Callable[[int], int] | None = None,
        timed: BatchTimer | None = None,
    ) -> FloatMatrix:
        """Pooled vectors of ``token_lists`` (ids with [CLS]/[SEP]), one row each, in order.

        ``threads`` is asked for the thread count before each native batch (given its tokens)
        and ``timed`` told how long that batch took. Raises EmbedError when llama.cpp refuses a batch.
        """
        out = np.empty((len(token_lists), self.n_embd), dtype=np.float32)
        groups = pack([len(t) for t in token_lists], self.n_batch, self.n_seq_max)
        for group in groups:
            tokens = self._fill(token_lists, group)
            if threads is not None:
                self.set_threads(threads(tokens))
            self._clear_memory()
            started = time.perf_counter()
            rc = self._lib.llama_decode(self._ctx, self._batch)
            seconds = time.perf_counter() - started
            if rc != 0:
                raise EmbedError(f"llama.cpp could not decode a batch of {len(group)} texts (code {rc})")
            if timed is not None:
                timed(tokens, seconds)
            for seq, row in enumerate(group):
                ptr = self._lib.llama_get_embeddings_seq(self._ctx, seq)
                if not ptr:
                    raise EmbedError(f"llama.cpp returned no vector for text {row} of the batch")
                # A view of llama.cpp's buffer, which the next decode reuses: copy it out now.
                out[row] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        self._batch.n_tokens = 0
        self._clear_memory()
        return out

    def _fill(self, token_lists: Sequence[Sequence[int]], group: range) -> int:
        """Put the sequences of ``group`` into the batch, each its own sequence id; returns tokens."""
        batch = self._batch
        j = 0
        for seq, row in enumerate(group):
            for pos, token in enumerate(token_lists[row]):
                batch.token[j] = token
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                # Every token is an output: pooling reads them all (as Llama.embed marks them).
                batch.logits[j] = 1
                j += 1
        batch.n_tokens = j
        return j

    def _clear_memory(self) -> None:
        # Embedding models with non-causal attention may keep no memory at all.
        memory = self._lib.llama_get_memory(self._ctx)
        if memory:
            self._lib.llama_memory_clear(memory, True)

    def close(self) -> None:
        """Free the batch and the thread pools (the context belongs to the caller)."""
        if not self._closed:
            self._closed = True
            self._lib.llama_batch_free(self._batch)
            if self._pools is not None:
                self._pools.close()
