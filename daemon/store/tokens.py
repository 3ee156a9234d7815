"""How text is cut into keyword-search tokens, the same way for documents and for queries.

SQLite's ``unicode61`` tokenizer (under ``porter`` stemming) indexes a chunk's text as it is;
it splits at every character that is not a letter or digit (so ``save_store`` and ``E-4012``
become ``save store`` and ``e 4012``) but keeps ``saveStore`` as one token and a run of CJK
characters as one token. ``extra_terms`` gives what it misses, indexed in a column of its own:
the parts of a camelCase word and the characters and bigrams of CJK text. A query is split by
``words`` and ``cjk_grams`` here, so both sides agree.
"""

from __future__ import annotations

import re
import unicodedata

# A word as unicode61 sees one: letters and digits (the underscore separates).
_WORD = re.compile(r"[^\W_]+")
# Han, Hiragana, Katakana, Hangul (syllables and jamo), CJK compatibility ideographs.
_CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
# Boundaries inside camelCase / PascalCase / HTTPServer / utf8Decode.
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def words(text: str) -> list[str]:
    """The letter-and-digit runs of ``text`` (NFC), as unicode61 splits them (case kept)."""
    return _WORD.findall(unicodedata.normalize("NFC", text))


def camel_parts(word: str) -> list[str]:
    """``saveStore`` -> ``[save, Store]``; a word with one part gives ``[]``."""
    if word.islower() or word.isupper() or not word.isascii():
        return []
    parts = _CAMEL.findall(word)
    return parts if len(parts) > 1 else []


def cjk_grams(run: str) -> list[str]:
    """The bigrams of a CJK run (its one character when it is one character long)."""
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def cjk_runs(word: str) -> list[str]:
    """The CJK runs inside a word."""
    return _CJK.findall(word)


def non_cjk(word: str) -> list[str]:
    """The parts of a word between its CJK runs (``iPhone手机`` -> ``[iPhone]``)."""
    return [p for p in _CJK.split(word) if p]


def extra_terms(text: str) -> str:
    """What a document needs indexed beside its text: camelCase parts, CJK characters and bigrams.

    Each group is separated by a newline, so a camelCase word's parts stay adjacent for a
    phrase query (``save store``) and nothing else is made adjacent to them.
    """
    out: list[str] = []
    for word in words(text):
        runs = cjk_runs(word)
        if runs:
            for run in runs:
                out.append(" ".join(list(run) + cjk_grams(run) if len(run) > 1 else [run]))
            rest = non_cjk(word)
            if rest:
                out.append(" ".join(rest))
            continue
        parts = camel_parts(word)
        if parts:
            out.append(" ".join(parts))
    return "\n".join(out)
