"""Heading paths: blocks of text collected under the current heading, one unit per section.

Every structured format (Markdown, reST, HTML, .docx, .odt, EPUB) walks its document in order
and reports headings and blocks here; a heading closes the section before it, so no unit (and
therefore no chunk) spans two sections. A path reads ``"# A > ## B > ### C"``, each heading with
its level as the document gives it.
"""

from __future__ import annotations

from .units import TextUnit

# A heading is metadata on every chunk below it: a pathological 10 kB "heading" must not be.
MAX_TITLE_CHARS = 120
SEPARATOR = " > "


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(text.split())


def path_title(title: str) -> str:
    """A heading's text as it appears in a path: one line, at most ``MAX_TITLE_CHARS``."""
    flat = one_line(title)
    return flat if len(flat) <= MAX_TITLE_CHARS else flat[: MAX_TITLE_CHARS - 1] + "…"


def format_path(headings: list[tuple[int, str]]) -> str | None:
    """``[(1, "A"), (2, "B")]`` -> ``"# A > ## B"``; None for no heading."""
    return SEPARATOR.join("#" * level + " " + title for level, title in headings) or None


class SectionBuilder:
    """Collects blocks under the current heading path and closes a unit at each heading.

    ``joiner`` goes between blocks (Markdown keeps its own line breaks, so it passes "\n").
    """

    def __init__(self, *, joiner: str = "\n\n") -> None:
        self._stack: list[tuple[int, str]] = []
        self._blocks: list[str] = []
        self._has_body = False
        self._units: list[TextUnit] = []
        self._joiner = joiner

    @property
    def path(self) -> str | None:
        """The heading path of the section being collected."""
        return format_path(self._stack)

    def heading(self, level: int, title: str, text: str | None = None) -> None:
        """Start a section: close the one before, pop headings of this level or deeper.

        The heading's ``text`` (its title on one line unless given) is also the first block of
        its section, so it is embedded with the text it introduces. A heading directly followed
        by a deeper one ("# Chapter" then "## Part") has no text of its own: it goes into the
        deeper section's unit instead of becoming a chunk of one word. A heading with no title
        is an ordinary block.
        """
        shown = path_title(title)
        if not shown:
            self.block(text if text is not None else title)
            return
        level = max(1, level)
        nested = bool(self._stack) and level > self._stack[-1][0]
        if self._has_body or not nested:
            self._close()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, shown))
        self._blocks.append(text if text is not None else one_line(title))

    def block(self, text: str) -> None:
        """Add a paragraph, table, list ... to the current section (blank ones are dropped)."""
        if text and not text.isspace():
            self._blocks.append(text)
            self._has_body = True

    def _close(self) -> None:
        if self._blocks:
            self._units.append(TextUnit(self._joiner.join(self._blocks), None, self.path))
        self._blocks = []
        self._has_body = False

    def units(self) -> list[TextUnit]:
        """Every unit so far, the open section closed."""
        self._close()
        return self._units
