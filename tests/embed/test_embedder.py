"""The llama.cpp embedder against an independent plain-numpy forward pass of the same weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from reference_bert import LLAMA_TOKENIZER_DIVERGENT_TEXTS, REFERENCE_TEXTS, ReferenceBert, WordPieceTokenizer

from daemon.embed.convert import convert
from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder, physical_cores
from daemon.errors import EmbedError, TextTooLongError


@pytest.fixture(scope="module")
def reference(model_source: Path) -> ReferenceBert:
    return ReferenceBert.from_dir(model_source)


@pytest.fixture(scope="module")
def reference_vectors(reference: ReferenceBert) -> np.ndarray:
    # special=False: llama-cpp-python tokenizes document text without parsing special tokens.
    return np.stack([reference.embed(t, special=False) for t in REFERENCE_TEXTS])


@pytest.fixture(scope="module")
def f16(f16_model: Path) -> Iterator[LlamaEmbedder]:
    emb = LlamaEmbedder(f16_model)
    yield emb
    emb.close()


@pytest.fixture(scope="module")
def q8(q8_model: Path) -> Iterator[LlamaEmbedder]:
    emb = LlamaEmbedder(q8_model)
    yield emb
    emb.close()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.asarray((a * b).sum(axis=-1))


def test_reference_texts_cover_what_the_issue_asks(f16: LlamaEmbedder) -> None:
    assert len(REFERENCE_TEXTS) >= 20
    counts = [f16.count_tokens(t) for t in REFERENCE_TEXTS]
    assert max(counts) > 0.95 * f16.max_tokens, "one text must be near the context limit"
    assert max(counts) <= f16.max_tokens
    assert min(counts) <= 8, "one very short text"


def test_f16_matches_reference_to_0_99999(f16: LlamaEmbedder, reference_vectors: np.ndarray) -> None:
    """As exact as f32 for this purpose: `embedd model build` may pick either by speed."""
    vectors = f16.embed(REFERENCE_TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(REFERENCE_TEXTS), 384)
    cos = _cos(vectors, reference_vectors)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.99999, f"text {worst} ({REFERENCE_TEXTS[worst][:40]!r}): cosine {cos[worst]:.6f}"


def test_q8_0_matches_reference_to_0_995(q8: LlamaEmbedder, reference_vectors: np.ndarray) -> None:
    cos = _cos(q8.embed(REFERENCE_TEXTS), reference_vectors)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.995, f"text {worst} ({REFERENCE_TEXTS[worst][:40]!r}): cosine {cos[worst]:.5f}"


def test_f32_matches_reference_to_0_99999(
    model_source: Path, tmp_path: Path, reference_vectors: np.ndarray
) -> None:
    path = convert(model_source, tmp_path / "m.f32.gguf", "f32").path
    emb = LlamaEmbedder(path)
    try:
        assert _cos(emb.embed(REFERENCE_TEXTS), reference_vectors).min() >= 0.99999
    finally:
        emb.close()


def test_token_ids_match_the_independent_tokenizer(f16: LlamaEmbedder, model_source: Path) -> None:
    tok = WordPieceTokenizer.from_dir(model_source)
    for text in REFERENCE_TEXTS:
        assert f16.tokenize(text) == tok.encode(text, special=False), text[:60]


def test_known_llama_tokenizer_divergences_still_diverge(f16: LlamaEmbedder, model_source: Path) -> None:
    """Documented in the README; if llama.cpp fixes one, this says so and the README changes.

    Compared with Hugging Face's default tokenization (what sentence-transformers does).
    """
    tok = WordPieceTokenizer.from_dir(model_source)
    for text in LLAMA_TOKENIZER_DIVERGENT_TEXTS:
        assert f16.tokenize(text) != tok.encode(text), text[:60]


def test_batch_composition_does_not_change_a_vector(f16: LlamaEmbedder) -> None:
    target = REFERENCE_TEXTS[3]
    alone = f16.embed([target])[0]
    pool = [t for t in REFERENCE_TEXTS if t != target]
    others = [*pool, *(f"{t} (copy)" for t in pool)][:31]
    batch = [*others[:15], target, *others[15:]]
    assert len(batch) == 32
    inside = f16.embed(batch)[15]
    assert float(_cos(alone, inside)) > 0.99999
    np.testing.assert_allclose(alone, inside, atol=2e-4)


def test_many_texts_keep_their_order_across_native_batches(f16: LlamaEmbedder) -> None:
    texts = [f"Document number {i} talks about topic {i * 7 % 13} in some detail." for i in range(120)]
    together = f16.embed(texts)
    for i in (0, 37, 64, 119):
        assert float(_cos(together[i], f16.embed([texts[i]])[0])) > 0.99999


def test_vectors_are_unit_length_when_normalised(f16: LlamaEmbedder, f16_model: Path) -> None:
    norms = np.linalg.norm(f16.embed(REFERENCE_TEXTS[:5]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    raw = LlamaEmbedder(f16_model, EmbedderSettings(normalize=False))
    try:
        raw_norms = np.linalg.norm(raw.embed(REFERENCE_TEXTS[:5]), axis=1)
        assert np.all(np.abs(raw_norms - 1.0) > 0.01)
        assert raw.normalize is False
    finally:
        raw.close()


def test_empty_and_whitespace_texts_are_never_sent(f16: LlamaEmbedder) -> None:
    for bad in ["", "   ", "\n\t"]:
        with pytest.raises(EmbedError, match="empty"):
            f16.embed(["fine text", bad])
    assert f16.embed([]).shape == (0, 384)


def test_too_long_text_is_rejected_not_truncated(f16: LlamaEmbedder) -> None:
    text = "embedding " * 600
    with pytest.raises(TextTooLongError) as info:
        f16.embed([text])
    assert info.value.tokens > 512
    assert info.value.limit == 512
    assert "512" in str(info.value)


def test_model_facts(f16: LlamaEmbedder, f16_model: Path) -> None:
    assert f16.dimension == 384
    assert f16.name == "all-MiniLM-L6-v2"
    assert f16.pooling == "mean"
    assert f16.max_tokens == 512
    assert f16.adaptive and 1 <= f16.threads <= physical_cores()
    assert len(f16.fingerprint) == 64
    assert f16.count_tokens("Hello, world!") == 6


def test_fingerprint_changes_with_the_file(f16: LlamaEmbedder, q8: LlamaEmbedder) -> None:
    assert f16.fingerprint != q8.fingerprint


def test_cls_pooling_model_matches_reference(model_source: Path, tmp_path: Path) -> None:
    src = tmp_path / "cls-model"
    shutil.copytree(model_source, src, ignore=shutil.ignore_patterns("model.safetensors"))
    (src / "model.safetensors").symlink_to(model_source / "model.safetensors")
    (src / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    emb = LlamaEmbedder(convert(src, tmp_path / "cls.gguf", "f16").path)
    try:
        assert emb.pooling == "cls"
        ref = ReferenceBert.from_dir(src)
        texts = REFERENCE_TEXTS[:6]
        expected = np.stack([ref.embed(t, special=False) for t in texts])
        assert _cos(emb.embed(texts), expected).min() >= 0.999
    finally:
        emb.close()


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    import hashlib
    import os

    from daemon.embed.embedder import file_sha256

    path = tmp_path / "model.gguf"
    path.write_bytes(b"a" * 4096)
    assert file_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert file_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    # Same size, new content and mtime: hashed again.
    path.write_bytes(b"b" * 4096)
    os.utime(path, ns=(1, 1))
    assert file_sha256(path) == hashlib.sha256(b"b" * 4096).hexdigest()
