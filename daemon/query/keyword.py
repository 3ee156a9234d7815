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
- ``"double quotes"`` make a phrase that must appear, in that order; an unbalanced quote is
  ignored. At most ``MAX_TERMS`` distinct terms are used (the first ones), so a 10,000-character
  query costs no more than a short one.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.store.tokens import camel_parts, cjk_grams, cjk_runs, non_cjk, words

MAX_TERMS = 64
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
    seen: set[tuple[tuple[str, ...], ...]] = set()
    terms: list[tuple[tuple[str, ...], ...]] = []
    required: list[tuple[str, ...]] = []
    budget = MAX_TERMS
    for i, piece in enumerate(pieces):
        if budget <= 0:
            break
        if i % 2 == 1:
            phrase = tuple(w.lower() for w in words(piece))
            if phrase and (phrase,) not in seen:
                seen.add((phrase,))
                required.append(phrase)
                budget -= 1
            continue
        for chunk in piece.split():
            for term in _chunk_terms(chunk):
                if budget <= 0:
                    break
                if term not in seen:
                    seen.add(term)
                    terms.append(term)
                    budget -= 1
    content = [t for t in terms if not (len(t) == 1 and len(t[0]) == 1 and t[0][0] in STOPWORDS)]
    if content or required:
        terms = content
    return KeywordQuery(tuple(terms), tuple(required))
