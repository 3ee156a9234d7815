"""Text units -> chunks: recursive character splitting, each chunk with its content hash.

Splitting happens per unit, so a chunk never spans two PDF pages, two slides or two sections
of a structured document, with one exception: a piece that is only its section's heading (an
empty section, a heading the splitter cut off from a long first paragraph) matches queries and
carries nothing, so it is joined to the text after it, which keeps its own section path (the
deeper one, for a heading straight above a subsection); a heading with no text after it in the
file joins the chunk before it. Pieces never join across pages. When a token
budget is given, a chunk over it is split again at half the character size
(recursively, down to single characters) instead of being truncated: nothing
the user wrote is silently dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Protocol

from langchain_text_splitters import RecursiveCharacterTextSplitter

from daemon.errors import TextTooLongError
from daemon.ingest.sections import SEPARATOR, one_line
from daemon.ingest.units import TextUnit


@dataclass(frozen=True)
class Chunk:
    """One piece of a file's text.

    ``index`` is the chunk's position in the file across all pages (0-based,
    contiguous); ``page`` and ``section`` are its unit's; ``hash`` is the sha256 hex digest
    of the text embedded (``embedded`` if set, else ``text``) in UTF-8; ``tokens`` is what
    that text costs the model (special tokens included) when a token counter was given, so
    nobody downstream tokenizes it again just to count, and None otherwise (it takes no part
    in equality: it follows from the text).
    """

    text: str
    page: int | None
    index: int
    hash: str
    tokens: int | None = field(default=None, compare=False)
    section: str | None = None
    # What the model embeds when it is not ``text`` (``with_context``); ``hash`` and ``tokens``
    # are then this text's, so the vector it keys is never shared with the bare text's.
    embedded: str | None = None


class TokenCounter(Protocol):
    """Counts the tokens a text costs the embedding model (usually its tokenizer)."""

    def __call__(self, text: str) -> int: ...


@lru_cache(maxsize=64)
def _splitter(size: int, overlap: int) -> RecursiveCharacterTextSplitter:
    # Splitters are stateless once built, so one per (size, overlap) serves all
    # files; the token-limit refinement asks for many halved sizes.
    return RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap)


def _split(text: str, size: int, overlap: int) -> list[str]:
    return [piece for piece in _splitter(size, overlap).split_text(text) if piece.strip()]


def _fit_tokens(
    text: str, size: int, overlap: int, count_tokens: TokenCounter, max_tokens: int
) -> list[tuple[str, int]]:
    """Returns ``text`` as pieces of at most ``max_tokens`` tokens each, in order, with their counts."""
    tokens = count_tokens(text)
    if tokens <= max_tokens:
        return [(text, tokens)]
    if len(text) <= 1:
        raise TextTooLongError(tokens, max_tokens)
    # Round up: halving 625 characters must give 313 + 312, not 312 + 312 + a 1-character scrap.
    half = (len(text) + 1) // 2
    # Scale the overlap with the size so every level keeps the same proportion
    # of context, and stays below the (smaller) chunk size.
    half_overlap = overlap * half // size
    pieces = _split(text, half, half_overlap)
    if any(len(piece) >= len(text) for piece in pieces):
        # Never expected from the splitter, but the recursion must make progress.
        pieces = [piece for piece in (text[:half], text[half:]) if piece.strip()]
    return [
        fitted
        for piece in pieces
        for fitted in _fit_tokens(piece, half, half_overlap, count_tokens, max_tokens)
    ]


def _path_titles(section: str | None) -> set[str]:
    """The heading titles of a path ``"# A > ## B"``: ``{"A", "B"}``."""
    if not section:
        return set()
    return {part.lstrip("#").strip() for part in section.split(SEPARATOR)}


def _is_heading_only(piece: str, section: str | None) -> bool:
    """Whether every line of ``piece`` is a heading of ``section``'s path (or its underline).

    Markdown keeps a heading verbatim (``## B``, or a setext title with its ``===`` line), reST
    under- and overlines it, the other formats give its text alone; all of them reduce to the
    titles the path names.
    """
    titles = _path_titles(section)
    if not titles:
        return False
    for raw in piece.split("\n"):
        line = raw.strip()
        if not line or (len(set(line)) == 1 and not line[0].isalnum()):
            continue  # blank, or an underline such as ===, ---, ~~~
        if one_line(line.strip("#").strip()) not in titles:
            return False
    return True


def _pieces(units: Sequence[TextUnit], size: int, overlap: int) -> list[tuple[str, TextUnit]]:
    """Every unit split at ``size``, heading-only pieces joined to the text they head.

    Within one unit the joined piece is the unit's own text from the heading to the end of the
    piece (whatever lay between them); across units (an empty section) the two are joined by a
    blank line.
    """
    pieces: list[tuple[str, TextUnit]] = []
    # A heading waiting for the text below it: its text, unit and offset in that unit.
    pending: tuple[str, TextUnit, int] | None = None
    for unit in units:
        cursor = 0
        for split in _split(unit.text, size, overlap):
            piece = split
            found = unit.text.find(piece, cursor)
            start = found if found >= 0 else cursor
            cursor = start + 1
            if pending is not None and pending[1] is unit and found >= 0:
                piece = unit.text[pending[2] : start + len(piece)]
                start = pending[2]
            elif pending is not None and pending[1].page == unit.page:
                piece = pending[0] + "\n\n" + piece
            elif pending is not None:
                pieces.append(pending[:2])  # nothing of its page follows it: it stays alone
            pending = None
            if _is_heading_only(piece, unit.section):
                pending = (piece, unit, start)
            else:
                pieces.append((piece, unit))
    if pending is not None:
        if pieces and pieces[-1][1].page == pending[1].page:
            text, unit = pieces[-1]
            pieces[-1] = (text + "\n\n" + pending[0], unit)
        else:
            pieces.append(pending[:2])  # a file that is a heading and nothing else keeps it
    return pieces


def chunk_units(
    units: Sequence[TextUnit],
    *,
    size: int,
    overlap: int,
    count_tokens: TokenCounter | None = None,
    max_tokens: int | None = None,
) -> list[Chunk]:
    """Splits each unit into chunks of at most ``size`` characters sharing up to ``overlap``.

    Empty and whitespace-only chunks are dropped. With ``count_tokens`` and
    ``max_tokens``, every returned chunk also holds at most ``max_tokens``
    tokens; ``TextTooLongError`` if even a single character exceeds it.
    The result is deterministic: same units and settings, same chunks.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must be in [0, size={size}), got {overlap}")
    if (count_tokens is None) != (max_tokens is None):
        raise ValueError("count_tokens and max_tokens must be given together")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")

    chunks: list[Chunk] = []
    for piece, unit in _pieces(units, size, overlap):
        fitted: list[tuple[str, int | None]] = (
            [(piece, None)]
            if count_tokens is None or max_tokens is None
            else list(_fit_tokens(piece, size, overlap, count_tokens, max_tokens))
        )
        for text, tokens in fitted:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            chunks.append(
                Chunk(
                    text=text,
                    page=unit.page,
                    index=len(chunks),
                    hash=digest,
                    tokens=tokens,
                    section=unit.section,
                )
            )
    return chunks


def context_of(section: str | None, title: str | None) -> str:
    """The context prefix's line: the document's title, then the heading path's titles."""
    parts = [title] if title else []
    if section:
        parts += [part.lstrip("#").strip() for part in section.split(SEPARATOR)]
    return " > ".join(p for p in parts if p)


def embedding_input(text: str, section: str | None, title: str | None) -> str:
    """What ``[chunking] context_prefix`` embeds for a chunk: ``"<context>\n\n<text>"``.

    A chunk that begins with a heading of its path already says it (the first chunk of a section),
    and a chunk without title or section has no context: both are embedded as they are. That
    is the variant ``bench/context_prefix.py`` measured.
    """
    context = context_of(section, title)
    if not context:
        return text
    # A chunk that opens with a heading of its path (its own, or the parent directly above it)
    # is the start of its section and already says where it is.
    first = text.lstrip().split("\n", 1)[0].strip().lstrip("#").strip()
    if first in _path_titles(section):
        return text
    return f"{context}\n\n{text}"


def with_context(
    chunks: Sequence[Chunk],
    title: str | None,
    *,
    count_tokens: TokenCounter | None = None,
    max_tokens: int | None = None,
) -> list[Chunk]:
    """``chunks`` with the context prefix in what is embedded (``content`` stays the chunk's text).

    The hash becomes the embedded text's: two chunks with the same words under different
    sections get different vectors. A chunk the prefix would push over ``max_tokens`` is
    embedded as it is (nothing is cut).
    """
    out = []
    for chunk in chunks:
        embedded = embedding_input(chunk.text, chunk.section, title)
        if embedded == chunk.text:
            out.append(chunk)
            continue
        tokens = count_tokens(embedded) if count_tokens is not None else None
        if tokens is not None and max_tokens is not None and tokens > max_tokens:
            out.append(chunk)
            continue
        digest = hashlib.sha256(embedded.encode("utf-8")).hexdigest()
        out.append(replace(chunk, hash=digest, tokens=tokens, embedded=embedded))
    return out
