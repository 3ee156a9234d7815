"""One search hit, whether it comes from the JSON store or from a sink, and one way to print hits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

SNIPPET_CHARS = 200


@dataclass(frozen=True)
class Hit:
    """One ranked chunk; ``score`` is what hits are ordered by (higher is better): the cosine
    similarity for a sink or vector search, BM25 for a keyword search, the fused score for hybrid.

    A hit of ``daemon.query.search`` also carries each side's rank and score (None where that
    side did not return it), the words the keyword side matched and a snippet around them.

    ``daemon`` names the daemon whose row it is (sink searches cover every daemon's rows);
    ``hash`` is the sha256 of ``content`` when the source of the hit records it; ``section``
    (heading path, slide title, EPUB chapter) and ``title`` (the document's own) when it has them.
    """

    rank: int
    score: float
    id: str
    source: str
    page: int | None
    chunk: int
    content: str
    timestamp: int | None = None
    daemon: str | None = None
    hash: str | None = None
    section: str | None = None
    title: str | None = None
    vector_rank: int | None = None
    vector_score: float | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None
    matched_terms: tuple[str, ...] | None = None
    snippet: str | None = None

    @property
    def ranked(self) -> bool:
        """True for a hit of ``daemon.query.search`` (it carries both sides' ranks and scores)."""
        return self.matched_terms is not None

    def to_json(self) -> dict[str, Any]:
        """The hit as a JSON object (full content); ``daemon``, ``hash``, ``section`` and ``title``
        only when known."""
        doc: dict[str, Any] = {
            "rank": self.rank,
            "score": self.score,
            "id": self.id,
            "source": self.source,
            "page": self.page,
            "chunk": self.chunk,
            "content": self.content,
            "timestamp": self.timestamp,
        }
        if self.daemon is not None:
            doc["daemon"] = self.daemon
        if self.hash is not None:
            doc["hash"] = self.hash
        if self.section is not None:
            doc["section"] = self.section
        if self.title is not None:
            doc["title"] = self.title
        if self.ranked:
            doc["vector_rank"] = self.vector_rank
            doc["vector_score"] = self.vector_score
            doc["keyword_rank"] = self.keyword_rank
            doc["keyword_score"] = self.keyword_score
            doc["matched_terms"] = list(self.matched_terms or ())
            doc["snippet"] = self.snippet
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Hit:
        """The inverse of ``to_json`` (how a hit answered by the running daemon is read back)."""
        return cls(
            rank=int(doc["rank"]),
            score=float(doc["score"]),
            id=str(doc["id"]),
            source=str(doc["source"]),
            page=None if doc.get("page") is None else int(doc["page"]),
            chunk=int(doc["chunk"]),
            content=str(doc["content"]),
            timestamp=None if doc.get("timestamp") is None else int(doc["timestamp"]),
            daemon=doc.get("daemon"),
            hash=doc.get("hash"),
            section=doc.get("section"),
            title=doc.get("title"),
            vector_rank=doc.get("vector_rank"),
            vector_score=doc.get("vector_score"),
            keyword_rank=doc.get("keyword_rank"),
            keyword_score=doc.get("keyword_score"),
            matched_terms=None if "matched_terms" not in doc else tuple(doc["matched_terms"]),
            snippet=doc.get("snippet"),
        )


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` on one line, cut at a word boundary near ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    return flat[: cut if cut > limit // 2 else limit] + " …"


def render_hits(hits: Sequence[Hit], out: TextIO, *, empty: str = "no results") -> None:
    """Print hits for a person: rank, score, where (and whose), the document's title and the
    section, and a snippet of the text."""
    if not hits:
        out.write(empty + "\n")
        return
    for hit in hits:
        where = hit.source + (f"  page {hit.page}" if hit.page is not None else "") + f"  chunk {hit.chunk}"
        if hit.daemon is not None:
            where += f"  daemon {hit.daemon}"
        out.write(f"{hit.rank:>2}. {hit.score:.4f}  {where}\n")
        context = [f'"{snippet(hit.title, 80)}"'] if hit.title else []
        if hit.section:
            context.append(snippet(hit.section, 120))
        if context:
            out.write(f"    in {'  '.join(context)}\n")
        out.write(f"    {snippet(hit.content)}\n")
