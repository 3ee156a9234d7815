"""One search over a store snapshot in any mode: filters, the vector and keyword sides, fusion, grouping.

The daemon's ``/v1/search``, ``embedd search`` without a daemon and (through the daemon) the
MCP tool all search through ``search_snapshot``, so they return the same hits.

- ``mode``: ``hybrid`` (the default: both sides fused, see ``daemon.query.fuse``), ``vector``
  (cosine similarity only, as before) or ``keyword`` (BM25 only).
- ``score`` is what hits are ordered by: the cosine in ``vector``, BM25 (higher is better) in
  ``keyword``, the fused score in ``hybrid``. Each hit also carries both sides' rank and score.
- Filters (``source_prefix``, ``formats``, ``modified_after``/``modified_before``) are applied
  before ranking, on both sides (in SQL on the keyword side), so they never leave fewer than
  ``k`` hits when more exist.
- A hybrid chunk search (convex, the default) credits each chunk with its file's evidence:
  each side's part of its score is averaged with the best part among the file's chunks on that
  side (``fuse.CONTEXT``), so a chunk whose meaning matches, in a file whose title chunk holds
  the query's words, ranks with both; within a file chunks keep their order.
- ``group_by="file"`` keeps the best chunk of each file: ``k`` distinct files. In ``hybrid``
  the files themselves are fused: each side ranks a file at its best chunk on that side, and the
  two file rankings are fused (``_fuse_files``), so a file whose words match one chunk and whose
  meaning matches another gets both sides' evidence. The hit shows the file's best chunk in the
  chunk fusion; its side ranks and scores are the file's (its best chunk's on each side).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from daemon.embed.embedder import FloatMatrix
from daemon.query.fuse import NORM_DEPTH, fuse, fused_scores
from daemon.query.hit import Hit
from daemon.query.keyword import KeywordQuery, parse
from daemon.query.options import MAX_K, Filters, Mode, SearchOptions, check_k, check_query
from daemon.query.rank import vector_top
from daemon.store.snapshot import BoolMask, Snapshot

__all__ = ["MAX_K", "Filters", "Mode", "Outcome", "SearchOptions", "check_k", "search_snapshot"]

# Candidates taken from each side before fusion (at least; 3 k for a larger k): as many as the
# fusion's normalisation spans.
MIN_CANDIDATES = NORM_DEPTH

log = structlog.get_logger(__name__)

# (row, score, vector rank, vector score, keyword rank, keyword score)
_Ranked = tuple[int, float, int | None, float | None, int | None, float | None]
_Row = TypeVar("_Row", bound=tuple[Any, ...])  # a ranked item: its row first


@dataclass(frozen=True)
class Outcome:
    """The hits of one search and caveats for whoever reads them."""

    hits: list[Hit]
    notes: tuple[str, ...] = ()


def search_snapshot(snap: Snapshot, query: str, vector: FloatMatrix | None, opts: SearchOptions) -> Outcome:
    """The best ``opts.k`` live entries of ``snap`` for ``query`` (and its ``vector``, unless keyword)."""
    check_query(query)
    notes: list[str] = []
    mask = _mask(snap, opts.filters)
    want = max(opts.k * 3, MIN_CANDIDATES) if opts.mode == "hybrid" else opts.k
    if opts.group_by == "file":
        want = max(want * 4, 400)
    vec: list[tuple[int, float]] = []
    kw: list[tuple[int, float]] = []
    rowids: dict[int, int] = {}
    kq = parse(query)
    order: list[_Ranked] = []
    while True:
        if opts.mode != "keyword":
            assert vector is not None
            vec = vector_top(snap, vector, want, mask=mask)
            if opts.min_score is not None:
                vec = [(r, s) for r, s in vec if s >= opts.min_score]
        if opts.mode != "vector" and not kq.empty:
            kw, rowids, note = _keyword_side(snap, kq, want, opts.filters)
            if note and note not in notes:
                notes.append(note)
        if opts.mode == "hybrid" and opts.group_by == "file":
            order, files = _fuse_files(snap, vec, kw, opts)
        else:
            order = _order(snap, vec, kw, opts)
            if opts.group_by == "file":
                order = _best_per_file(snap, order)
            files = len(order)
        if opts.group_by == "file" and files < opts.k and (len(vec) >= want or len(kw) >= want):
            want *= 4  # fewer files than asked for, and either side may hold more
            continue
        break
    order = order[: opts.k]
    marks = {}
    if snap.keyword is not None and rowids and not kq.empty:
        try:
            marks = snap.keyword.mark(kq.match(), [rowids[r] for r, *_ in order if r in rowids])
        except sqlite3.Error as exc:
            log.warning("keyword_mark_failed", reason=str(exc))
    hits = []
    for rank, (row, score, vr, vs, kr, ks) in enumerate(order, start=1):
        e = snap.entry(row)
        mark = marks.get(rowids.get(row, -1))
        hits.append(
            Hit(
                rank, score, e.id, e.source, e.page, e.chunk, e.content, e.timestamp,
                section=e.section, title=e.title,
                vector_rank=vr, vector_score=vs, keyword_rank=kr, keyword_score=ks,
                matched_terms=mark.terms if mark is not None else (),
                snippet=mark.snippet if mark is not None else None,
            )
        )  # fmt: skip
    return Outcome(hits, tuple(notes))


def _mask(snap: Snapshot, filters: Filters) -> BoolMask | None:
    mask = snap.alive
    if filters.active:
        by = snap.sources_mask(lambda s: filters.keep(s, snap.mtimes.get(s)))
        mask = by if mask is None else mask & by
    return mask


def _keyword_side(
    snap: Snapshot, kq: KeywordQuery, want: int, filters: Filters
) -> tuple[list[tuple[int, float]], dict[int, int], str | None]:
    """The keyword side's (row, BM25) best first, the rows' FTS rowids, and a note when it failed."""
    index = snap.keyword
    if index is None or index.broken is not None:
        return (
            [],
            {},
            "the keyword index is unavailable (see the daemon's log), so hits are ranked by vectors only",
        )
    where, params = filters.sql()
    out: list[tuple[int, float]] = []
    rowids: dict[int, int] = {}
    limit = want
    try:
        while True:
            # Ranked in memory when it can be (no filter, no required phrase, postings built);
            # else by FTS5, which takes the filter as SQL.
            found = index.rank(*kq.parts(), limit) if not where and not kq.required else None
            if found is None:
                found = index.search(kq.match(), limit, where=where, params=params)
            out, rowids = [], {}
            live_row = snap.live_row
            for rowid, source, chunk, hash_, score in found:
                # The index may be ahead of this snapshot: only chunks the snapshot holds, live.
                row = live_row(source, chunk, hash_)
                if row is not None and row not in rowids:
                    rowids[row] = rowid
                    out.append((row, score))
            if len(out) >= want or len(found) < limit:
                return out[:want], rowids, None
            limit *= 2
    except sqlite3.Error as exc:
        log.warning("keyword_search_failed", path=str(index.path), reason=str(exc))
        return [], {}, f"the keyword index failed ({exc}); the daemon rebuilds it at its next start"


def _order(
    snap: Snapshot, vec: Sequence[tuple[int, float]], kw: Sequence[tuple[int, float]], opts: SearchOptions
) -> list[_Ranked]:
    """Chunks best first in ``opts.mode`` (in hybrid only the best ``k``: all a chunk search shows;
    with the convex fusion each chunk credited with its file's evidence, ``fuse.CONTEXT``)."""
    if opts.mode == "vector":
        return [(r, s, i + 1, s, None, None) for i, (r, s) in enumerate(vec)]
    if opts.mode == "keyword":
        return [(r, s, None, None, i + 1, s) for i, (r, s) in enumerate(kw)]
    rows = snap.rows
    # The file's credit is for evidence of two kinds split over its chunks: only where both
    # sides are weighed (a convex alpha strictly between 0 and 1). RRF keeps its documented
    # score, the sum of the reciprocal ranks.
    both = opts.fusion == "convex" and 0.0 < opts.alpha < 1.0
    fused = fuse(
        vec, kw, method=opts.fusion, rrf_k=opts.rrf_k, alpha=opts.alpha, limit=opts.k,
        group_of=(lambda r: rows[r].source) if both else None,
    )  # fmt: skip
    return [
        (int(f.key), f.score, f.vector_rank, f.vector_score, f.keyword_rank, f.keyword_score)  # type: ignore[call-overload]
        for f in fused
    ]


def _best_per_file(snap: Snapshot, order: Sequence[_Row]) -> list[_Row]:
    """The first item of each file in ``order`` (items whose first element is a row), in order."""
    seen: set[str] = set()
    out = []
    for item in order:
        source = snap.rows[item[0]].source
        if source not in seen:
            seen.add(source)
            out.append(item)
    return out


def _fuse_files(
    snap: Snapshot, vec: Sequence[tuple[int, float]], kw: Sequence[tuple[int, float]], opts: SearchOptions
) -> tuple[list[_Ranked], int]:
    """Hybrid files: each side's file ranking (a file at its best chunk there) fused; the best
    ``k`` first, and how many files the two sides hold.

    Fusing chunks and then keeping a file's best chunk loses evidence when a file's keyword
    match and its vector match are different chunks: neither chunk holds both, and each is
    normalised against lists where the file's other chunks crowd out other files. Fusing per
    file is what the file ranking means (bench/retrieval.py, nDCG@10 in docs/benchmarks.md).
    Each file is shown by its best chunk in the chunk fusion of ``vec`` and ``kw``; only the
    shown files' chunks are looked for (the fused scores are arrays, see ``fused_scores``).
    """
    rows = snap.rows
    src_v = [rows[r].source for r, _ in vec]
    src_w = [rows[r].source for r, _ in kw]
    vf, kf = _file_list(src_v, vec), _file_list(src_w, kw)
    files = fuse(vf, kf, method=opts.fusion, rrf_k=opts.rrf_k, alpha=opts.alpha, limit=opts.k)
    chunks = fused_scores(vec, kw, method=opts.fusion, rrf_k=opts.rrf_k, alpha=opts.alpha)
    # Each chunk's file, in the chunk fusion's key order: the vector side's, then keyword-only.
    source = src_v + [src_w[j] for j in chunks.keyword_at[len(vec) :].tolist()]
    wanted = {str(f.key) for f in files}
    shown: dict[str, int] = {}
    for p in chunks.order():
        name = source[p]
        if name in wanted and name not in shown:
            shown[name] = chunks.keys[p]
            if len(shown) == len(wanted):
                break
    order = [
        (shown[str(f.key)], f.score, f.vector_rank, f.vector_score, f.keyword_rank, f.keyword_score)
        for f in files
    ]
    return order, len(dict.fromkeys(src_v + src_w))


def _file_list(sources: Sequence[str], ranked: Sequence[tuple[int, float]]) -> list[tuple[str, float]]:
    """A ranked chunk list as a ranked file list: each file once, at its best chunk's score
    (``sources`` holds each chunk's file)."""
    first: dict[str, float] = {}
    for name, (_, score) in zip(sources, ranked, strict=True):
        if name not in first:
            first[name] = score
    return list(first.items())
