"""Tests of daemon.ingest.chunker with the real langchain splitter and small fake token counters."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from daemon.errors import TextTooLongError
from daemon.ingest.chunker import Chunk, chunk_units
from daemon.ingest.extract import TextUnit


def words(count: int, prefix: str = "w") -> str:
    """Distinct words, so every chunk's position in the source is unambiguous."""
    return " ".join(f"{prefix}{i}" for i in range(count))


def per_char(text: str) -> int:
    return len(text)


def per_word(text: str) -> int:
    return len(text.split())


def test_chunks_are_deterministic() -> None:
    units = [TextUnit(words(500), None)]
    first = chunk_units(units, size=200, overlap=40)
    assert first == chunk_units(units, size=200, overlap=40)
    assert len(first) > 1


def test_every_chunk_respects_the_size() -> None:
    chunks = chunk_units([TextUnit(words(2000), None)], size=120, overlap=20)
    assert all(0 < len(chunk.text) <= 120 for chunk in chunks)


def test_short_text_is_one_chunk() -> None:
    assert chunk_units([TextUnit("  Hello world.\n", None)], size=100, overlap=10) == [
        Chunk(
            text="Hello world.",
            page=None,
            index=0,
            hash=hashlib.sha256(b"Hello world.").hexdigest(),
        )
    ]


def test_pages_are_kept_and_never_mixed() -> None:
    units = [TextUnit(words(300, "a"), 1), TextUnit(words(300, "b"), 2), TextUnit(words(300, "c"), 5)]
    chunks = chunk_units(units, size=150, overlap=30)
    prefix_of_page = {1: "a", 2: "b", 5: "c"}
    assert {chunk.page for chunk in chunks} == set(prefix_of_page)
    for chunk in chunks:
        assert chunk.page is not None
        assert all(word.startswith(prefix_of_page[chunk.page]) for word in chunk.text.split())
    assert [chunk.page for chunk in chunks] == sorted(chunk.page or 0 for chunk in chunks)


def test_indices_are_contiguous_across_pages() -> None:
    units = [TextUnit(words(200, "a"), 1), TextUnit("   ", 2), TextUnit(words(200, "b"), 3)]
    chunks = chunk_units(units, size=100, overlap=0)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))


def test_hash_is_sha256_of_the_utf8_text() -> None:
    chunks = chunk_units([TextUnit("Grüße aus Köln 𝄞 " * 40, None)], size=80, overlap=10)
    for chunk in chunks:
        assert chunk.hash == hashlib.sha256(chunk.text.encode("utf-8")).hexdigest()


def test_without_overlap_chunks_partition_the_words() -> None:
    text = words(1000)
    chunks = chunk_units([TextUnit(text, None)], size=100, overlap=0)
    assert " ".join(chunk.text for chunk in chunks).split() == text.split()


def test_with_overlap_consecutive_chunks_share_a_bounded_tail() -> None:
    text = words(1000)
    overlap = 30
    chunks = chunk_units([TextUnit(text, None)], size=100, overlap=overlap)
    all_words = text.split()
    shared_any = False
    for before, after in itertools.pairwise(chunks):
        first_words, next_words = before.text.split(), after.text.split()
        # Chunks are windows of the word sequence that only move forward.
        start = all_words.index(next_words[0])
        assert all_words[start : start + len(next_words)] == next_words
        assert start > all_words.index(first_words[0])
        shared = [word for word in next_words if word in first_words]
        assert len(" ".join(shared)) <= overlap
        shared_any = shared_any or bool(shared)
    assert shared_any
    # Together the chunks still cover every word.
    assert {word for chunk in chunks for word in chunk.text.split()} == set(all_words)


def test_whitespace_only_text_and_chunks_are_dropped() -> None:
    units = [TextUnit(" \n\n\t ", None), TextUnit("", 1), TextUnit("a" + " " * 500 + "b", 2)]
    chunks = chunk_units(units, size=50, overlap=0)
    assert [chunk.text for chunk in chunks] == ["a", "b"]
    assert [chunk.index for chunk in chunks] == [0, 1]


def test_token_limit_splits_a_word_without_separators() -> None:
    word = "".join(chr(ord("a") + i % 26) for i in range(5000))
    chunks = chunk_units([TextUnit(word, 3)], size=5000, overlap=0, count_tokens=per_char, max_tokens=64)
    assert all(per_char(chunk.text) <= 64 for chunk in chunks)
    assert min(len(chunk.text) for chunk in chunks) >= 32  # even halves, no 1-character scraps
    assert "".join(chunk.text for chunk in chunks) == word  # split, never truncated
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert {chunk.page for chunk in chunks} == {3}


def test_token_limit_with_overlap_keeps_every_character() -> None:
    word = "".join(chr(ord("a") + i % 26) for i in range(5000))
    chunks = chunk_units(
        [TextUnit(word, None)], size=1000, overlap=200, count_tokens=per_char, max_tokens=100
    )
    assert all(len(chunk.text) <= 100 for chunk in chunks)
    assert all(chunk.text in word for chunk in chunks)
    covered = "".join(chunk.text for chunk in chunks)
    assert set(covered) == set(word)
    assert word.startswith(chunks[0].text)
    assert word.endswith(chunks[-1].text)


def test_token_limit_splits_on_words_first() -> None:
    text = words(400)
    chunks = chunk_units([TextUnit(text, None)], size=2000, overlap=0, count_tokens=per_word, max_tokens=25)
    assert all(per_word(chunk.text) <= 25 for chunk in chunks)
    # Word boundaries were enough: no word was cut in two.
    assert " ".join(chunk.text for chunk in chunks).split() == text.split()


def test_chunks_carry_their_token_count_only_when_counted() -> None:
    units = [TextUnit(words(400), None)]
    counted = chunk_units(
        units, size=120, overlap=20, count_tokens=lambda t: len(t.split()) + 2, max_tokens=50
    )
    assert counted and all(c.tokens == len(c.text.split()) + 2 for c in counted)
    assert all(c.tokens is None for c in chunk_units(units, size=120, overlap=20))


def test_chunks_within_the_token_limit_are_untouched() -> None:
    units = [TextUnit(words(500), None)]
    plain = chunk_units(units, size=200, overlap=40)
    counted = chunk_units(units, size=200, overlap=40, count_tokens=per_char, max_tokens=200)
    assert counted == plain


def test_a_single_character_over_the_limit_is_an_error() -> None:
    with pytest.raises(TextTooLongError):
        chunk_units([TextUnit("abc", None)], size=10, overlap=0, count_tokens=lambda text: 5, max_tokens=2)


@pytest.mark.parametrize(
    ("size", "overlap", "max_tokens", "counter"),
    [(0, 0, None, False), (10, 10, None, False), (10, -1, None, False), (10, 0, 5, False), (10, 0, 0, True)],
)
def test_invalid_arguments_are_rejected(
    size: int, overlap: int, max_tokens: int | None, counter: bool
) -> None:
    with pytest.raises(ValueError):
        chunk_units(
            [TextUnit("text", None)],
            size=size,
            overlap=overlap,
            count_tokens=per_char if counter else None,
            max_tokens=max_tokens,
        )


def test_a_megabyte_of_text_is_chunked() -> None:
    # Not a timing assertion (benchmarks measure speed): the splitter must
    # handle a realistic large file in one call and keep every word.
    paragraph = words(150) + ".\n\n"
    text = paragraph * (1_000_000 // len(paragraph))
    chunks = chunk_units([TextUnit(text, None)], size=1000, overlap=0, count_tokens=per_word, max_tokens=256)
    assert len(chunks) >= 1000
    assert sum(len(chunk.text.split()) for chunk in chunks) == len(text.split())
