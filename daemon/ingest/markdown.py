"""Markdown -> one unit per heading section, the text kept verbatim.

A line scanner that follows CommonMark where it decides what a heading is: ATX headings
(``## Title ##``, at most three spaces of indent, a space or the end of the line after the
``#``s), setext headings (a paragraph underlined with ``===`` or ``---``), and the places where a
``#`` line is *not* a heading: fenced code (``` or ~~~, closed by a fence of the same character
at least as long), indented code, HTML comments, list items and block quotes (an underline
below those is a thematic break). Front matter (``---`` or ``+++`` on the first line) goes
with the text before the first heading. Every step is a plain string operation on one line,
so the scan is linear in the file's size whatever it holds (no backtracking regular
expressions).

Standalone (see ``units``); it runs in the daemon, since it costs about as much as decoding.
"""

from __future__ import annotations

from .sections import SectionBuilder
from .text import decode
from .units import Parsed, TextUnit

_FRONT_MATTER_LINES = 200
_LIST_MARKERS = ("-", "+", "*")


def _indent(line: str) -> int:
    """Columns of leading spaces (a tab counts as reaching the next multiple of 4)."""
    col = 0
    for ch in line:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col += 4 - col % 4
        else:
            break
    return col


def _atx(line: str) -> tuple[int, str] | None:
    """(level, title) of an ATX heading line, or None."""
    if _indent(line) > 3:
        return None
    body = line.lstrip(" ")
    hashes = len(body) - len(body.lstrip("#"))
    if not 1 <= hashes <= 6:
        return None
    rest = body[hashes:]
    if rest and rest[0] not in " \t":
        return None  # "#hashtag" is a paragraph
    title = rest.strip(" \t")
    # An optional closing sequence: '#'s preceded by a space (or making up the whole title).
    unclosed = title.rstrip("#")
    if not unclosed:
        title = ""
    elif unclosed != title and unclosed[-1] in " \t":
        title = unclosed.rstrip(" \t")
    return hashes, title


def _fence(line: str) -> tuple[str, int] | None:
    """(character, length) of a code fence opening or closing line, or None."""
    if _indent(line) > 3:
        return None
    body = line.lstrip(" ")
    if not body.startswith(("```", "~~~")):
        return None
    char = body[0]
    length = len(body) - len(body.lstrip(char))
    if char == "`" and "`" in body[length:]:
        return None  # an info string with a backtick: inline code, not a fence
    return char, length


def _underline(line: str) -> int | None:
    """1 for a ``===`` line, 2 for ``---``, else None (a setext underline, if a paragraph is above)."""
    if _indent(line) > 3:
        return None
    body = line.strip(" \t")
    if body and body[0] in "=-" and body.count(body[0]) == len(body):
        return 1 if body[0] == "=" else 2
    return None


def _starts_container(line: str) -> bool:
    """A list item or block quote line: a paragraph inside it cannot become a setext heading."""
    body = line.lstrip(" ")
    if _indent(line) > 3 or not body:
        return False
    if body[0] == ">":
        return True
    if body[0] in _LIST_MARKERS:
        return len(body) == 1 or body[1] in " \t"
    digits = len(body) - len(body.lstrip("0123456789"))
    return (
        0 < digits <= 9
        and body[digits : digits + 1] in (".", ")")
        and body[digits + 1 : digits + 2] in ("", " ", "\t")
    )


def _front_matter(lines: list[str]) -> int:
    """Number of lines of YAML (``---``) or TOML (``+++``) front matter at the start, or 0."""
    if not lines or lines[0].rstrip() not in ("---", "+++"):
        return 0
    closers = ("---", "...") if lines[0].rstrip() == "---" else ("+++",)
    for i in range(1, min(len(lines), _FRONT_MATTER_LINES)):
        if lines[i].rstrip() in closers:
            return i + 1
    return 0


class _Scanner:
    """One pass over the lines; the open section's lines wait in ``body``."""

    def __init__(self) -> None:
        self.sections = SectionBuilder(joiner="\n")
        self.body: list[str] = []
        self.fence: tuple[str, int] | None = None
        self.in_comment = False
        # The open paragraph: None, "plain" (may become a setext heading) or "container"
        # (inside a list item or quote); ``para_start`` is its first line's index in ``body``.
        self.para: str | None = None
        self.para_start = 0

    def flush(self) -> None:
        text = "\n".join(self.body)
        self.body = []
        self.sections.block(text)

    def heading(self, level: int, title: str, lines: list[str]) -> None:
        self.flush()
        self.sections.heading(level, title, "\n".join(lines))
        self.para = None

    def line(self, line: str) -> None:
        if self.fence is not None:
            self.body.append(line)
            closing = _fence(line)
            if (
                closing
                and closing[0] == self.fence[0]
                and closing[1] >= self.fence[1]
                and not line.lstrip(" ")[closing[1] :].strip()
            ):
                self.fence = None
            return
        if self.in_comment:
            self.body.append(line)
            self.in_comment = "-->" not in line
            return
        if not line.strip():
            self.body.append(line)
            self.para = None
            return
        if _indent(line) >= 4 and self.para is None:
            self.body.append(line)  # indented code: nothing in it is a heading
            return
        opening = _fence(line)
        if opening is not None:
            self.body.append(line)
            self.fence = opening
            self.para = None
            return
        stripped = line.lstrip(" ")
        if stripped.startswith("<!--") and _indent(line) <= 3:
            self.body.append(line)
            self.in_comment = "-->" not in stripped[4:]
            self.para = None
            return
        atx = _atx(line)
        if atx is not None:
            self.heading(atx[0], atx[1], [line])
            return
        level = _underline(line)
        if level is not None and self.para == "plain":
            title_lines = self.body[self.para_start :]
            del self.body[self.para_start :]
            title = " ".join(t.strip() for t in title_lines)
            self.heading(level, title, [*title_lines, line])
            return
        if level is not None:
            self.body.append(line)  # a thematic break (or an underline below a list item)
            self.para = None
            return
        self.body.append(line)
        if _starts_container(line):
            self.para = "container"
        elif self.para is None:
            self.para = "plain"
            self.para_start = len(self.body) - 1


def split(text: str) -> list[tuple[str | None, str]]:
    """``[(heading path, verbatim section text)]`` in document order (for tests and tools)."""
    return [(u.section, u.text) for u in units_of(text)]


def units_of(text: str) -> list[TextUnit]:
    """The units of Markdown ``text`` (newlines already normalised)."""
    lines = text.split("\n")
    scanner = _Scanner()
    front = _front_matter(lines)
    if front:
        scanner.body = lines[:front]
        scanner.flush()
    for line in lines[front:]:
        scanner.line(line)
    scanner.flush()
    return scanner.sections.units()


def parse(data: bytes) -> Parsed:
    """A Markdown file: decoded like any text file, then one unit per section."""
    text, warnings = decode(data)
    return Parsed(tuple(units_of(text)), warnings=warnings)
