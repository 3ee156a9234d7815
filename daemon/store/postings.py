"""BM25 over an in-memory inverted index of the keyword sidecar's chunks, in numpy.

SQLite FTS5 finds the chunks holding a term quickly, but ranking them calls its ``bm25()`` for
every match (about 3 µs each): a query whose words are in 30,000 of 100,000 chunks took 160 ms
to rank. Here every term's postings (the FTS rowids holding it and how often) are numpy arrays,
and a query is a few gathers and one ``argpartition``: about 1 ms at 100,000 chunks.

The scoring is FTS5's own: ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))``
with k1 = 1.2, b = 0.75 and ``idf = log((N - n + 0.5) / (n + 0.5))`` (a tiny positive number
where that is not positive), summed over every term of the query (a repeated term again). The
tokens are the sidecar's: the words of every column as unicode61 splits them, lowercased,
without diacritics, Porter-stemmed (PyStemmer's Porter, the algorithm FTS5's ``porter`` runs).

Rowids are never reused (the sidecar's ``chunks`` table is AUTOINCREMENT), so a removed chunk is
only marked dead; new chunks go to a small delta that is folded into the main arrays once it
holds a quarter as many postings as they do (amortised, a change costs what it adds).
"""

from __future__ import annotations

import math
import threading
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import Stemmer

from daemon.store.tokens import words

K1 = 1.2
B = 0.75
# The delta is folded into the main arrays when it holds this share of their postings.
FOLD_SHARE = 0.25
FOLD_MIN = 50_000

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class Tokenizer:
    """Text -> the sidecar's index terms (what FTS5's ``porter unicode61 remove_diacritics 2`` makes)."""

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("porter")
        self._cache: dict[str, str] = {}

    def term(self, word: str) -> str:
        """One word (as ``words`` cuts them) -> its index term."""
        t = self._cache.get(word)
        if t is None:
            low = word.lower()
            if not low.isascii():
                low = "".join(c for c in unicodedata.normalize("NFKD", low) if not unicodedata.combining(c))
            t = self._stemmer.stemWord(low)
            if len(self._cache) < 1_000_000:
                self._cache[word] = t
        return t

    def terms(self, text: str) -> list[str]:
        """The index terms of ``text``, in order, repeats kept."""
        return [self.term(w) for w in words(text)]


class Postings:
    """Every live chunk's terms, by FTS rowid; thread-safe (one writer, any readers)."""

    def __init__(self) -> None:
        self._tok = Tokenizer()
        self._lock = threading.Lock()
        self._vocab: dict[str, int] = {}
        # Main arrays: postings sorted by term, ``_ptr[t]:_ptr[t+1]`` the postings of term t.
        self._ptr: IntArray = np.zeros(1, np.int64)
        self._rows: IntArray = np.zeros(0, np.int64)
        self._tf: FloatArray = np.zeros(0, np.float32)
        # The delta: term -> (rowids, tfs) added since the last fold.
        self._delta: dict[int, tuple[list[int], list[float]]] = {}
        self._delta_postings = 0
        # Batches of a bulk load (``load``) as (terms, rows, tfs) arrays, until the next fold.
        self._bulk: list[tuple[IntArray, IntArray, FloatArray]] = []
        # Per rowid: token count (0 for a rowid never seen) and whether it is live.
        self._len: FloatArray = np.zeros(1024, np.float32)
        self._live: npt.NDArray[np.bool_] = np.zeros(1024, np.bool_)
        self._count = 0
        self._total_len = 0.0

    @property
    def count(self) -> int:
        """Live chunks."""
        return self._count

    # ----- building and changing -----

    def add(self, docs: Iterable[tuple[int, str]]) -> None:
        """Index ``(rowid, text)`` pairs (rowids not seen before)."""
        with self._lock:
            for rowid, text in docs:
                self._add_one(rowid, text)
            if self._delta_postings >= max(FOLD_MIN, FOLD_SHARE * len(self._rows)):
                self._fold()

    def load(self, docs: Sequence[tuple[int, str]]) -> None:
        """Index a batch of ``(rowid, text)`` pairs in bulk (a build): kept as arrays until ``fold``."""
        rowids: list[int] = []
        terms: list[int] = []
        sizes: list[int] = []
        with self._lock:
            for rowid, text in docs:
                if rowid < len(self._live) and self._live[rowid]:
                    continue
                ids = [self._vocab.setdefault(t, len(self._vocab)) for t in self._tok.terms(text)]
                rowids.append(rowid)
                sizes.append(len(ids))
                terms.extend(ids)
            if not rowids:
                return
            self._grow(max(rowids))
            rows = np.repeat(np.asarray(rowids, np.int64), sizes)
            key = np.asarray(terms, np.int64) * (1 << 32) + rows
            uniq, counts = np.unique(key, return_counts=True)
            self._bulk.append((uniq >> 32, uniq & 0xFFFFFFFF, counts.astype(np.float32)))
            ids_ = np.asarray(rowids, np.int64)
            lengths = np.asarray(sizes, np.float32)
            self._len[ids_] = lengths
            self._live[ids_] = True
            self._count += len(rowids)
            self._total_len += float(lengths.sum())

    def _grow(self, rowid: int) -> None:
        if rowid >= len(self._live):
            size = max(rowid + 1, 2 * len(self._live))
            self._len = np.concatenate([self._len, np.zeros(size - len(self._len), np.float32)])
            self._live = np.concatenate([self._live, np.zeros(size - len(self._live), np.bool_)])

    def remove(self, rowids: Iterable[int]) -> None:
        """Mark ``rowids`` dead (unknown ones are ignored)."""
        with self._lock:
            for rowid in rowids:
                if 0 <= rowid < len(self._live) and self._live[rowid]:
                    self._live[rowid] = False
                    self._count -= 1
                    self._total_len -= float(self._len[rowid])

    def _add_one(self, rowid: int, text: str) -> None:
        self._grow(rowid)
        if self._live[rowid]:
            return
        terms = self._tok.terms(text)
        counts: dict[int, int] = {}
        for t in terms:
            tid = self._vocab.setdefault(t, len(self._vocab))
            counts[tid] = counts.get(tid, 0) + 1
        for tid, n in counts.items():
            rows, tfs = self._delta.setdefault(tid, ([], []))
            rows.append(rowid)
            tfs.append(float(n))
        self._delta_postings += len(counts)
        self._len[rowid] = len(terms)
        self._live[rowid] = True
        self._count += 1
        self._total_len += len(terms)

    def _fold(self) -> None:
        """The delta and the main arrays -> new main arrays, dead postings dropped."""
        vocab = len(self._vocab)
        old_terms = np.repeat(np.arange(len(self._ptr) - 1, dtype=np.int64), np.diff(self._ptr))
        d_terms = np.fromiter(
            (tid for tid, (rows, _) in self._delta.items() for _ in rows), np.int64, self._delta_postings
        )
        d_rows = np.fromiter(
            (r for rows, _ in self._delta.values() for r in rows), np.int64, self._delta_postings
        )
        d_tf = np.fromiter(
            (f for _, tfs in self._delta.values() for f in tfs), np.float32, self._delta_postings
        )
        terms = np.concatenate([old_terms, d_terms, *(b[0] for b in self._bulk)])
        rows = np.concatenate([self._rows, d_rows, *(b[1] for b in self._bulk)])
        tf = np.concatenate([self._tf, d_tf, *(b[2] for b in self._bulk)])
        self._bulk = []
        keep = self._live[rows]
        terms, rows, tf = terms[keep], rows[keep], tf[keep]
        order = np.lexsort((rows, terms))
        terms, self._rows, self._tf = terms[order], rows[order], tf[order]
        self._ptr = np.searchsorted(terms, np.arange(vocab + 1)).astype(np.int64)
        self._delta = {}
        self._delta_postings = 0

    def fold(self) -> None:
        """Fold the delta now (after a bulk build)."""
        with self._lock:
            if self._delta_postings or self._bulk:
                self._fold()

    # ----- ranking -----

    def _postings(self, tid: int | None) -> tuple[IntArray, FloatArray]:
        if tid is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows: IntArray
        tf: FloatArray
        if tid < len(self._ptr) - 1:
            a, b = int(self._ptr[tid]), int(self._ptr[tid + 1])
            rows, tf = self._rows[a:b], self._tf[a:b]
        else:
            rows, tf = np.zeros(0, np.int64), np.zeros(0, np.float32)
        extra = self._delta.get(tid)
        if extra is not None:
            rows = np.concatenate([rows, np.asarray(extra[0], np.int64)])
            tf = np.concatenate([tf, np.asarray(extra[1], np.float32)])
        return rows, tf

    def rank(
        self, words_: Sequence[str], limit: int, *, phrases: Sequence[tuple[IntArray, FloatArray]] = ()
    ) -> list[tuple[int, float]]:
        """The best ``limit`` live rowids for the words ``words_`` (each once per time it is given).

        ``phrases`` are, for each multi-word phrase of the query, the rowids holding it and the
        phrase's BM25 score in each (FTS5 scores them: it knows positions, so it counts every
        occurrence); they are added as they are.
        """
        with self._lock:
            n_docs = self._count
            if n_docs == 0 or limit <= 0:
                return []
            avg = self._total_len / n_docs
            size = len(self._live)
            scores = np.zeros(size, np.float32)
            for found, found_scores in phrases:
                keep = (found >= 0) & (found < size)
                keep[keep] = self._live[found[keep]]
                scores[found[keep]] += found_scores[keep]
            for w in words_:
                tid = self._vocab.get(self._tok.term(w))
                all_rows, all_tf = self._postings(tid)
                if not len(all_rows):
                    continue
                live = self._live[all_rows]
                rows, tf = all_rows[live], all_tf[live]
                n = len(rows)
                if not n:
                    continue
                idf = math.log((n_docs - n + 0.5) / (n + 0.5))
                idf = idf if idf > 0 else 1e-6
                norm = K1 * (1 - B + B * self._len[rows] / avg)
                # A term's rowids are distinct, so a plain fancy-index add is exact.
                scores[rows] += (idf * tf * (K1 + 1) / (tf + norm)).astype(np.float32)
            hit = np.flatnonzero(scores)
            if not len(hit):
                return []
            if len(hit) > limit:
                hit = hit[np.argpartition(-scores[hit], limit - 1)[:limit]]
            hit = hit[np.lexsort((hit, -scores[hit]))]
            # tolist(): the same Python numbers as int() and float() of each, at once.
            return list(zip(hit.tolist(), scores[hit].tolist(), strict=True))
