"""Small hand-written fakes for unit tests of one piece."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from daemon.embed.embedder import FloatMatrix
from daemon.errors import EmbedFailedError


class FakeEmbedder:
    """Deterministic vectors from the text's hash; records every call; can refuse a marker."""

    def __init__(self, dimension: int = 8, *, poison: str | None = None, max_tokens: int = 512) -> None:
        self.dimension = dimension
        self.fingerprint = "f" * 64
        self.name = "fake-model"
        self.pooling = "mean"
        self.max_tokens = max_tokens
        self.poison = poison
        self.calls: list[list[str]] = []
        self.counted: list[str] = []

    def count_tokens(self, text: str) -> int:
        self.counted.append(text)
        return len(text.split()) + 2

    def embed(self, texts: Sequence[str], *, tokens: Sequence[int | None] | None = None) -> FloatMatrix:
        self.calls.append(list(texts))
        if self.poison is not None and any(self.poison in t for t in texts):
            raise EmbedFailedError(f"refusing a text containing {self.poison!r}")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            out[i] = vec / np.linalg.norm(vec)
        return out

    @property
    def embedded_texts(self) -> list[str]:
        return [t for call in self.calls for t in call]

    def expected(self, text: str) -> FloatMatrix:
        """The vector this fake gives ``text`` (without recording a call)."""
        calls = list(self.calls)
        try:
            return self.embed([text])[0]
        finally:
            self.calls = calls
