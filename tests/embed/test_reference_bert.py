"""Tests of the plain-numpy BERT reference itself (no torch needed).

The expected token ids and embedding components below were produced by the
Hugging Face tokenizer and sentence-transformers while the reference was
written, and are pinned here so that CI can check the reference without them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from reference_bert import (
    LONG_TEXT,
    REFERENCE_TEXTS,
    ReferenceBert,
    WordPieceTokenizer,
    erf,
    gelu,
    model_dir,
)

MAX_POSITIONS = 512


@pytest.fixture(scope="module")
def source() -> Path:
    return model_dir()


@pytest.fixture(scope="module")
def tokenizer(source: Path) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_dir(source)


@pytest.fixture(scope="module")
def bert(source: Path) -> ReferenceBert:
    return ReferenceBert.from_dir(source)


# (text, ids from tokenizers 0.23 / transformers for all-MiniLM-L6-v2)
KNOWN_IDS = [
    ("Hello, world!", [101, 7592, 1010, 2088, 999, 102]),
    # Lowercased, NFD-decomposed, accents stripped.
    ("Café naïve Zürich", [101, 7668, 15743, 10204, 102]),
    # Per-character lowercasing: the final capital sigma becomes U+03C3 (29733), not final U+03C2.
    ("ΟΔΟΣ", [101, 1169, 29722, 29730, 29733, 102]),
    ("İstanbul", [101, 9960, 102]),
    ("I love 🍕!", [101, 1045, 2293, 100, 999, 102]),
    # Every CJK ideograph is its own word; 东 and 很 are not in the vocabulary.
    ("东京很大", [101, 100, 1755, 100, 1810, 102]),
    (
        "supercalifragilisticexpialidocious",
        [101, 3565, 9289, 10128, 29181, 24411, 4588, 10288, 19312, 21273, 10085, 6313, 102],
    ),
    # NUL, U+FFFD and control characters vanish without splitting the word.
    ("a\x00b\ufffdc\x07d", [101, 5925, 2094, 102]),
    # Special tokens written in the text are recognised, case-sensitively.
    ("one [SEP] two[MASK]", [101, 2028, 102, 2048, 103, 102]),
    ("[sep]", [101, 1031, 19802, 1033, 102]),
    # U+2028 and NBSP are whitespace for the Rust tokenizer.
    ("a\u2028b\u00a0c", [101, 1037, 1038, 1039, 102]),
    # ASCII symbols split like punctuation.
    ("$5+3=<8>^`|~", [101, 1002, 1019, 1009, 1017, 1027, 1026, 1022, 1028, 1034, 1036, 1064, 1066, 102]),
    # U+061D is punctuation in Python's Unicode 14 but unknown to tokenizers' tables.
    ("a\u061db", [101, 100, 102]),
    ("x²", [101, 1060, 10701, 102]),
    # Hangul syllables decompose into jamo under NFD.
    ("한국어", [101, 1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008, 102]),
    ("tab\there\nnew", [101, 21628, 2182, 2047, 102]),
    ("don't stop-believing", [101, 2123, 1005, 1056, 2644, 1011, 8929, 102]),
    # One piece is missing, so the whole word is [UNK].
    ("ǅemal", [101, 100, 102]),
    ("", [101, 102]),
    ("   ", [101, 102]),
]


@pytest.mark.parametrize(("text", "ids"), KNOWN_IDS)
def test_encode_matches_hugging_face(tokenizer: WordPieceTokenizer, text: str, ids: list[int]) -> None:
    assert tokenizer.encode(text) == ids


def test_special_tokens_can_be_read_as_text(tokenizer: WordPieceTokenizer) -> None:
    # What llama-cpp-python's embed() does: tokenize with special=False.
    assert tokenizer.encode("one [SEP] two[MASK]", special=False) == [
        101,
        2028,
        1031,
        19802,
        1033,
        2048,
        1031,
        7308,
        1033,
        102,
    ]


def test_word_longer_than_100_chars_is_unknown(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.encode("a" * 101) == [101, 100, 102]
    at_limit = tokenizer.encode("a" * 100)
    assert len(at_limit) == 52
    assert 100 not in at_limit


def test_normalizer_options_come_from_the_model_dir(tokenizer: WordPieceTokenizer) -> None:
    opts = tokenizer.options
    assert (opts.lowercase, opts.strip_accents, opts.handle_chinese_chars, opts.clean_text) == (
        True,
        True,
        True,
        True,
    )
    assert tokenizer.max_input_chars_per_word == 100


def test_erf_matches_math_erf() -> None:
    xs = np.linspace(-8.0, 8.0, 40001)
    expected = np.array([math.erf(x) for x in xs])
    assert np.max(np.abs(erf(xs) - expected)) < 1e-14


def test_erf_keeps_shape() -> None:
    xs = np.arange(-3.0, 3.0, 0.5).reshape(3, 4)
    assert erf(xs).shape == (3, 4)


def test_gelu_is_the_exact_erf_form() -> None:
    values = gelu(np.array([-1.0, 0.0, 1.0, 3.0]))
    # x * Phi(x), Phi the standard normal CDF.
    expected = [-0.15865525393145707, 0.0, 0.8413447460685429, 2.99595030590511]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-15)


def test_embedding_shape_and_unit_norm(bert: ReferenceBert) -> None:
    vec = bert.embed("The quick brown fox jumps over the lazy dog.")
    assert vec.shape == (384,)
    assert vec.dtype == np.float64
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-12


def test_unnormalised_embedding_has_the_same_direction(bert: ReferenceBert) -> None:
    raw = bert.embed("Hello, world!", normalize=False)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), bert.embed("Hello, world!"), atol=1e-15)


def test_embedding_is_deterministic(bert: ReferenceBert, source: Path) -> None:
    text = "Deterministic output, please."
    first = bert.embed(text)
    assert np.array_equal(first, bert.embed(text))
    assert np.array_equal(first, ReferenceBert.from_dir(source).embed(text))


def test_embed_is_embed_ids_of_encode(bert: ReferenceBert) -> None:
    text = "Tokens in, vector out."
    assert np.array_equal(bert.embed(text), bert.embed_ids(bert.tokenizer.encode(text)))


# Components 0..7 of sentence-transformers' float32 output for the same texts.
PINNED = [
    ("Hello, world!", [-0.038177, 0.032911, -0.005459, 0.01437, -0.040291, -0.116533, 0.031688, 0.001912]),
    (LONG_TEXT, [-0.073822, 0.019337, 0.040836, 0.001439, 0.066521, -0.009673, -0.047288, 0.046255]),
]


@pytest.mark.parametrize(("text", "head"), PINNED)
def test_embedding_matches_sentence_transformers(bert: ReferenceBert, text: str, head: list[float]) -> None:
    np.testing.assert_allclose(bert.embed(text)[:8], head, rtol=0, atol=2e-6)


def test_similar_sentences_are_closer_than_unrelated(bert: ReferenceBert) -> None:
    guitar = bert.embed("A man is playing a guitar.")
    also_guitar = bert.embed("Someone plays an acoustic guitar.")
    stocks = bert.embed("The stock market fell sharply on Tuesday.")
    similar = float(guitar @ also_guitar)
    assert similar > 0.7
    assert similar > float(guitar @ stocks) + 0.5
    assert similar > float(also_guitar @ stocks) + 0.5


def test_mean_pooling_averages_every_token(bert: ReferenceBert) -> None:
    ids = bert.tokenizer.encode("Mean over all tokens, [CLS] and [SEP] included.")
    states = bert.hidden_states(ids)
    assert states.shape == (len(ids), 384)
    np.testing.assert_allclose(bert.embed_ids(ids, normalize=False), states.mean(axis=0), atol=1e-15)


def test_too_many_ids_are_refused(bert: ReferenceBert) -> None:
    with pytest.raises(ValueError, match="513 tokens"):
        bert.embed_ids([101] + [1037] * 511 + [102])
    with pytest.raises(ValueError, match="no token ids"):
        bert.embed_ids([])


def test_cls_pooling_is_read_from_the_pooling_config(tmp_path: Path, source: Path) -> None:
    # A bge-style directory: the same files, but CLS pooling.
    for entry in source.iterdir():
        if entry.name != "1_Pooling":
            (tmp_path / entry.name).symlink_to(entry)
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling), encoding="utf-8")

    cls_bert = ReferenceBert.from_dir(tmp_path)
    assert cls_bert.pooling == "cls"
    ids = cls_bert.tokenizer.encode("Pool the first token.")
    first = cls_bert.hidden_states(ids)[0]
    np.testing.assert_allclose(cls_bert.embed_ids(ids), first / np.linalg.norm(first), atol=1e-15)


def test_reference_texts_cover_the_range(tokenizer: WordPieceTokenizer) -> None:
    assert len(REFERENCE_TEXTS) >= 24
    assert len(set(REFERENCE_TEXTS)) == len(REFERENCE_TEXTS)
    lengths = [len(tokenizer.encode(text)) for text in REFERENCE_TEXTS]
    assert max(lengths) <= MAX_POSITIONS
    assert max(lengths) >= 500
    assert any(len(text.split()) == 1 and text.isalpha() for text in REFERENCE_TEXTS)
    # Texts with non-ASCII letters, CJK, emoji and code all take part.
    assert any("ü" in text for text in REFERENCE_TEXTS)
    assert any("\u4e00" <= ch <= "\u9fff" for text in REFERENCE_TEXTS for ch in text)
    assert any(ord(ch) > 0xFFFF for text in REFERENCE_TEXTS for ch in text)
    assert any("def " in text for text in REFERENCE_TEXTS)
