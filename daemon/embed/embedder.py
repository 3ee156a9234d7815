"""Text -> vectors: the ``Embedder`` protocol and its llama.cpp implementation.

``LlamaEmbedder`` owns the one llama.cpp context the process keeps resident. It embeds many
texts per native call, never truncates (a text longer than the context raises
``TextTooLongError``; the chunker splits upstream) and never sends empty text. Each text is
tokenized once per ``embed`` call: the ids that pass the length check are the ids llama.cpp
gets (``native.NativeBatcher``). Its thread count is fixed, or follows the load
(``threads.AdaptiveThreads``), changed between native batches whatever thread calls ``embed``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.embed.gguf import check_gguf
from daemon.embed.llama import llama_cpp_module
from daemon.embed.native import NativeBatcher
from daemon.embed.pool import DEFAULT_POLL, ThreadPools, uses_openmp
from daemon.embed.threads import AdaptiveThreads, FixedThreads, ThreadPolicy
from daemon.errors import BadTextError, EmbedError, EmbedFailedError, ModelError, TextTooLongError

FloatMatrix = npt.NDArray[np.float32]

_POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


class Embedder(Protocol):
    """Anything that turns texts into a float32 matrix of fixed width."""

    @property
    def dimension(self) -> int:
        """Width of every vector."""
        ...

    @property
    def fingerprint(self) -> str:
        """sha256 of the model file: vectors from different fingerprints never mix."""
        ...

    @property
    def name(self) -> str:
        """Human-readable model name (the GGUF ``general.name``)."""
        ...

    @property
    def pooling(self) -> str:
        """Pooling mode the model applies ("mean", "cls", ...)."""
        ...

    @property
    def max_tokens(self) -> int:
        """Most tokens one text may have, special tokens included."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs, special tokens included."""
        ...

    def embed(self, texts: Sequence[str], *, tokens: Sequence[int | None] | None = None) -> FloatMatrix:
        """Vectors for ``texts``, shape (len(texts), dimension), in input order.

        ``tokens`` are the texts' token counts where the caller already knows them (the
        chunker's), so that nothing tokenizes a text again only to count it.
        """
        ...


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-thread siblings counted once)."""
    allowed = os.sched_getaffinity(0)
    seen: set[str] = set()
    for cpu in allowed:
        sib = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            seen.add(sib.read_text().strip())
        except OSError:
            seen.add(str(cpu))
    return max(1, len(seen))


# (device, inode, size, mtime_ns) -> sha256: a status request must not re-read a 90 MB model.
_SHA_CACHE: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks; remembered while its inode, size and mtime hold."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = _SHA_CACHE.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        while block := fh.read(1 << 20):
            digest.update(block)
    _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


@dataclass(frozen=True)
class EmbedderSettings:
    """How the llama.cpp context is set up."""

    threads: int = 0  # 0: adapt between 1 and the physical cores, following the load
    normalize: bool = True
    batch_tokens: int = 0  # 0: the model's context length
    flash_attn: bool = True
    gpu_layers: int = 0  # layers offloaded to a GPU; -1: all (needs a GPU build of llama.cpp)
    # A llama.cpp built without OpenMP: ggml's thread pools' poll level (0 to 100), or None for
    # ggml's own throw-away pool per batch. Ignored by an OpenMP build.
    pool_poll: int | None = DEFAULT_POLL


def thread_policy(threads: int, n_batch: int) -> ThreadPolicy:
    """``threads`` as configured: N is N; 0 adapts between 1 and the physical cores."""
    if threads > 0:
        return FixedThreads(threads)
    # A batch of a quarter of the context or more measures the CPU, not the call overhead.
    return AdaptiveThreads(physical_cores(), min_tokens=max(16, n_batch // 4))


class LlamaEmbedder:
    """The llama-cpp-python embedder: one resident context, batched native calls.

    Not thread-safe for concurrent ``embed`` calls by design (llama.cpp contexts are not); a
    lock makes misuse wait instead of corrupting state.
    """

    def __init__(
        self,
        model_path: Path,
        settings: EmbedderSettings | None = None,
        *,
        policy: ThreadPolicy | None = None,
    ) -> None:
        """Load ``model_path``; ``policy`` replaces the thread policy ``settings.threads`` implies."""
        settings = settings or EmbedderSettings()
        header = check_gguf(model_path)
        llama_cpp = llama_cpp_module()
        self._path = model_path
        self._normalize = settings.normalize
        self._lock = threading.Lock()
        self._fingerprint = file_sha256(model_path)
        arch = header.get_str("general.architecture")
        n_ctx_train = header.get_int(f"{arch}.context_length", 512)
        pooling_id = header.get_int(f"{arch}.pooling_type", 0)
        if pooling_id not in (1, 2):
            kind = _POOLING_NAMES.get(pooling_id, pooling_id)
            raise ModelError(
                model_path,
                f"not a sentence-embedding model (pooling type {kind}); use a GGUF with mean or cls pooling",
            )
        # llama.cpp aborts the process (an assert, not an error) when one batch holds more tokens
        # than n_ubatch, so both are the same and we never hand it a text longer than that.
        n_batch = min(settings.batch_tokens or n_ctx_train, n_ctx_train)
        self._max_tokens = n_batch
        self._policy = policy or thread_policy(settings.threads, n_batch)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model_path),
                embedding=True,
                n_ctx=n_batch,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=self._policy.threads,
                n_threads_batch=self._policy.threads,
                n_gpu_layers=settings.gpu_layers,
                flash_attn=settings.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(model_path, f"llama.cpp cannot load it: {exc}") from exc
        self._dimension = int(self._llm.n_embd())
        self._openmp = uses_openmp(llama_cpp)
        pools = None
        if not self._openmp and settings.pool_poll is not None:
            pools = ThreadPools(llama_cpp, self._llm.ctx, poll=settings.pool_poll)
        self._native = NativeBatcher(llama_cpp, self._llm.ctx, self._dimension, pools=pools)
        self._pooling = _POOLING_NAMES[pooling_id]
        self._name = header.get_str("general.name") or model_path.stem
        self._gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def name(self) -> str:
        return self._name

    @property
    def pooling(self) -> str:
        return self._pooling

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def threads(self) -> int:
        """The thread count batches run on now (it moves when ``adaptive``)."""
        return self._policy.threads

    @property
    def adaptive(self) -> bool:
        """Whether the thread count follows the load (``threads = 0``)."""
        return self._policy.adaptive

    @property
    def thread_policy(self) -> ThreadPolicy:
        """What decides the thread count (benchmarks report its ``changes``)."""
        return self._policy

    @property
    def context_threads(self) -> int:
        """The thread count llama.cpp's context holds for batches (read from llama.cpp)."""
        return self._native.context_threads()

    @property
    def pool_threads(self) -> int | None:
        """The size of the ggml thread pool batches run on now (None: OpenMP, or a pool per batch)."""
        return self._native.pool_threads

    @property
    def gpu_layers(self) -> int:
        """The layer count llama.cpp was asked to offload (-1, all, reads as 2147483647)."""
        return int(self._llm.model_params.n_gpu_layers)

    @property
    def gpu_offload(self) -> bool:
        """Whether this build of llama.cpp can offload to a GPU at all."""
        return self._gpu_offload

    @property
    def openmp(self) -> bool:
        """Whether this llama.cpp runs its threads on OpenMP (else on ggml's own thread pool)."""
        return self._openmp

    @property
    def normalize(self) -> bool:
        return self._normalize

    @property
    def path(self) -> Path:
        return self._path

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with [CLS] and [SEP], as the model sees it."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def embed(self, texts: Sequence[str], *, tokens: Sequence[int | None] | None = None) -> FloatMatrix:
        # ``tokens`` is not needed: the ids llama.cpp gets come from the one tokenization below.
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        ids: list[list[int]] = []
        for i, text in enumerate(texts):
            if not text.strip():
                raise BadTextError(f"text {i} is empty or whitespace only; it must not be embedded")
            tokens = self.tokenize(text)
            if len(tokens) > self._max_tokens:
                raise TextTooLongError(len(tokens), self._max_tokens)
            ids.append(tokens)
        with self._lock:
            try:
                vectors = self._native.embed(
                    ids, threads=self._policy.before_batch, timed=self._policy.after_batch
                )
            except EmbedError as exc:  # llama.cpp refused texts that were fit to embed: its failure
                raise EmbedFailedError(str(exc)) from exc
        if self._normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            np.divide(vectors, np.maximum(norms, 1e-12), out=vectors)
        return vectors

    def close(self) -> None:
        """Free the llama.cpp context and model."""
        with self._lock:
            self._native.close()
            self._llm.close()
