"""Any query text -> a safe SQLite FTS5 MATCH expression. User text is never handed to MATCH as syntax.

The text is cut into words exactly as documents are (``daemon.store.tokens``), and every word
goes into MATCH inside double quotes, so ``AND``, ``NEAR``, ``*``, ``-``, ``:``, ``^`` and
parentheses are searched as the words they hold (or dropped, when they hold none). The terms are
joined with OR, so BM25 ranks the chunks holding more of them higher.

- A token joined by punctuation (``E-4012``, ``save_store``, ``os.path``) is a phrase of its
  words, also matched written as one (``e4012``).
- A camelCase word also matches its parts as a phrase (``saveStore`` finds ``save_store``,
  ``save store``).
- CJK text is matched by its character bigrams (a single character by itself).
- Common English words (``STOPWORDS``) are dropped unless the query holds nothing else.
- A word the query repeats counts again (up to ``MAX_REPEAT`` times), as BM25's query term
  frequency: a long question repeats what it is about.
- ``"double quotes"`` inside other words add the phrase (its words in that order) as a term of
  its own beside its words: chunks holding it exactly rank higher, the others are still found.
  A query of nothing but quoted phrases finds only the chunks holding every one of them. An
  unbalanced quote is ignored. At most ``MAX_TERMS`` terms are used (the first ones), so a
  10,000-character query costs no more than a short one.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.store.tokens import camel_parts, cjk_grams, cjk_runs, non_cjk, words

MAX_TERMS = 64
# A word said again counts again, up to this many times: BM25's query term frequency. The
# words a long question repeats are what it is about (nDCG@10 0.325 -> 0.385 on CISI, 0.454 ->
# 0.492 on CACM, bench/retrieval.py); beyond four the rankings no longer change.
MAX_REPEAT = 4
# English words so common that BM25 gives them almost no weight, while matching them costs a
# scan of nearly every chunk (600 ms for "the ... of ..." at 100,000 chunks, 30 ms without).
# Left out of a query's optional terms unless the query holds nothing else; a quoted phrase
# keeps them.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


@dataclass(frozen=True)
class KeywordQuery:
    """The terms of one query: each term a set of alternatives, each alternative a phrase (words)."""

    terms: tuple[tuple[tuple[str, ...], ...], ...]
    required: tuple[tuple[str, ...], ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing in the query can match a word (no letters or digits)."""
        return not self.terms and not self.required

    def parts(self) -> tuple[list[str], list[str]]:
        """What ``match`` scores: its single words and its multi-word phrases (FTS5 syntax), repeats kept."""
        single: list[str] = []
        phrases: list[str] = []
        for alternatives in self.terms:
            for a in alternatives:
                if len(a) == 1:
                    single.append(a[0])
                else:
                    phrases.append(_phrase(a))
        return single, phrases

    def match(self) -> str:
        """The FTS5 MATCH expression ('' when empty)."""
        optional = " OR ".join(_term(t) for t in self.terms)
        required = " AND ".join(_phrase(p) for p in self.required)
        if required and optional:
            return f"{required} AND ({optional})"
        return required or optional


def _phrase(words_: tuple[str, ...]) -> str:
    # Words hold letters and digits only (no quote), so quoting cannot be escaped from.
    return '"' + " ".join(words_) + '"'


def _term(alternatives: tuple[tuple[str, ...], ...]) -> str:
    if len(alternatives) == 1:
        return _phrase(alternatives[0])
    return "(" + " OR ".join(_phrase(a) for a in alternatives) + ")"


def _word_terms(word: str) -> list[tuple[tuple[str, ...], ...]]:
    """The terms one word gives."""
    runs = cjk_runs(word)
    if runs:
        out: list[tuple[tuple[str, ...], ...]] = [((g,),) for run in runs for g in cjk_grams(run)]
        out += [t for part in non_cjk(word) for t in _word_terms(part)]
        return out
    low = word.lower()
    parts = camel_parts(word)
    if parts:
        return [((low,), tuple(p.lower() for p in parts))]
    return [((low,),)]


def _chunk_terms(chunk: str) -> list[tuple[tuple[str, ...], ...]]:
    """The terms of one whitespace-separated piece of the query."""
    ws = words(chunk)
    if len(ws) <= 1 or any(cjk_runs(w) for w in ws):
        return [t for w in ws for t in _word_terms(w)]
    low = tuple(w.lower() for w in ws)
    return [(low, ("".join(low),))]


def parse(query: str) -> KeywordQuery:
    """The terms of ``query``; never raises (the result may be ``empty``)."""
    pieces = query.split('"')
    if len(pieces) % 2 == 0:  # an unbalanced quote: the last one is text
        pieces[-2:] = [pieces[-2] + " " + pieces[-1]]
    quoted = [tuple(w.lower() for w in words(p)) for p in pieces[1::2]]
    if not any(words(p) for p in pieces[0::2]):
        # Nothing but quoted phrases: the user asked for exactly these.
        return _required([q for q in quoted if q])
    counts: dict[tuple[tuple[str, ...], ...], int] = {}
    terms: list[tuple[tuple[str, ...], ...]] = []

    def add(term: tuple[tuple[str, ...], ...]) -> None:
        if len(terms) < MAX_TERMS and counts.get(term, 0) < MAX_REPEAT:
            counts[term] = counts.get(term, 0) + 1
            terms.append(term)

    for i, piece in enumerate(pieces):
        if i % 2 == 1 and len(quoted[i // 2]) > 1:
            add((quoted[i // 2],))  # the phrase itself: chunks holding it exactly score it too
        for chunk in piece.split():
            for term in _chunk_terms(chunk):
                add(term)
    content = [t for t in terms if not (len(t) == 1 and len(t[0]) == 1 and t[0][0] in STOPWORDS)]
    return KeywordQuery(tuple(content or terms))


def _required(phrases: list[tuple[str, ...]]) -> KeywordQuery:
    unique = list(dict.fromkeys(phrases))[:MAX_TERMS]
    return KeywordQuery((), tuple(unique))
