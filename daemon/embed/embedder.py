"""Text -> vectors: the ``Embedder`` protocol and its llama.cpp implementation.

``LlamaEmbedder`` owns the one llama.cpp context the process keeps resident. It embeds many
texts per native call, never truncates (a text longer than the context raises
``TextTooLongError``; the chunker splits upstream) and never sends empty text.
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
from daemon.errors import EmbedError, ModelError, TextTooLongError

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

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Vectors for ``texts``, shape (len(texts), dimension), in input order."""
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


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EmbedderSettings:
    """How the llama.cpp context is set up."""

    threads: int = 0  # 0: physical cores
    normalize: bool = True
    batch_tokens: int = 0  # 0: the model's context length
    flash_attn: bool = True


class LlamaEmbedder:
    """The llama-cpp-python embedder: one resident context, batched native calls.

    Not thread-safe for concurrent ``embed`` calls by design (llama.cpp contexts are not); a
    lock makes misuse wait instead of corrupting state.
    """

    def __init__(self, model_path: Path, settings: EmbedderSettings | None = None) -> None:
        settings = settings or EmbedderSettings()
        header = check_gguf(model_path)
        llama_cpp = llama_cpp_module()
        self._path = model_path
        self._normalize = settings.normalize
        self._threads = settings.threads or physical_cores()
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
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model_path),
                embedding=True,
                n_ctx=n_batch,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                flash_attn=settings.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(model_path, f"llama.cpp cannot load it: {exc}") from exc
        self._dimension = int(self._llm.n_embd())
        self._pooling = _POOLING_NAMES[pooling_id]
        self._name = header.get_str("general.name") or model_path.stem

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
        return self._threads

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

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            if not text.strip():
                raise EmbedError(f"text {i} is empty or whitespace only; it must not be embedded")
            n = self.count_tokens(text)
            if n > self._max_tokens:
                raise TextTooLongError(n, self._max_tokens)
        with self._lock:
            try:
                raw = self._llm.embed(list(texts), normalize=False, truncate=False)
            except (ValueError, RuntimeError) as exc:
                raise EmbedError(f"llama.cpp failed to embed a batch of {len(texts)} texts: {exc}") from exc
        vectors = np.asarray(raw, dtype=np.float32)
        if vectors.shape != (len(texts), self._dimension):
            raise EmbedError(
                f"llama.cpp returned shape {vectors.shape}, expected ({len(texts)}, {self._dimension})"
            )
        if self._normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            np.divide(vectors, np.maximum(norms, 1e-12), out=vectors)
        return vectors

    def close(self) -> None:
        """Free the llama.cpp context and model."""
        self._llm.close()
