"""Bytes of a text file -> text: UTF-8 (BOM or not) or UTF-16 with a BOM, newlines normalised.

Invalid bytes become U+FFFD with one warning saying where the first one was; NUL bytes mean a
binary file, which is refused. Standalone (see ``units``): the sandboxed worker decodes reST
with it too.
"""

from __future__ import annotations

import re

from .units import BINARY, Parsed, Refused, TextUnit

# Lone surrogates in text decoded with "surrogateescape"/"surrogatepass" mark the
# bytes that were not valid in the file's encoding.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_ESCAPED_RUN = re.compile("[\udc80-\udcff]+")
_SURROGATE = re.compile("[\ud800-\udfff]")

_BOM_UTF8 = b"\xef\xbb\xbf"
_BOM_UTF16_LE = b"\xff\xfe"
_BOM_UTF16_BE = b"\xfe\xff"


def normalise_newlines(text: str) -> str:
    """CRLF and lone CR (classic Mac) become LF; left alone a lone CR would glue lines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_utf8(data: bytes, offset: int) -> tuple[str, list[str]]:
    """Decodes UTF-8, replacing each run of invalid bytes with one U+FFFD."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    # surrogateescape maps every invalid byte to one lone surrogate, which lets
    # the C-speed regex engine count and replace them (valid UTF-8 never
    # decodes to a lone surrogate).
    escaped = data.decode("utf-8", "surrogateescape")
    replaced = len(escaped) - len(_ESCAPED_BYTE.sub("", escaped))
    warning = f"invalid UTF-8 at byte {first_bad + offset}, {replaced} bytes replaced"
    return _ESCAPED_RUN.sub("\ufffd", escaped), [warning]


def _decode_utf16(data: bytes, codec: str, offset: int) -> tuple[str, list[str]]:
    """Decodes BOM-less UTF-16, replacing unpaired surrogates and a dangling odd byte."""
    odd = len(data) % 2
    body = data[: len(data) - odd]
    first_bad: int | None = len(body) if odd else None
    replaced = odd
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        first_bad = exc.start
        # surrogatepass keeps unpaired surrogates as code points (valid pairs
        # still combine), so every surrogate left is one bad 2-byte unit.
        text, bad_units = _SURROGATE.subn("\ufffd", body.decode(codec, "surrogatepass"))
        replaced += 2 * bad_units
    if odd:
        text += "\ufffd"
    if first_bad is None:
        return text, []
    return text, [f"invalid UTF-16 at byte {first_bad + offset}, {replaced} bytes replaced"]


def decode(data: bytes) -> tuple[str, tuple[str, ...]]:
    """The text of a text file's bytes and the warnings about bytes that were replaced.

    Raises ``Refused`` (kind ``binary``) when the bytes hold NULs.
    """
    if data.startswith(_BOM_UTF16_LE) or data.startswith(_BOM_UTF16_BE):
        codec = "utf-16-le" if data.startswith(_BOM_UTF16_LE) else "utf-16-be"
        text, warnings = _decode_utf16(data[2:], codec, offset=2)
        if "\x00" in text:
            raise Refused(BINARY, "binary file (NUL characters in UTF-16 text); not indexed")
    else:
        nul = data.find(b"\x00")
        if nul >= 0:
            raise Refused(
                BINARY,
                f"binary file (NUL bytes, first at byte {nul}); text files are indexed as UTF-8 "
                "or UTF-16, documents by their suffix (.pdf, .docx, .html, ...)",
            )
        offset = len(_BOM_UTF8) if data.startswith(_BOM_UTF8) else 0
        text, warnings = _decode_utf8(data[offset:], offset)
    return normalise_newlines(text), tuple(warnings)


def parse(data: bytes) -> Parsed:
    """A plain text file: one unit (none when it is empty or only whitespace)."""
    text, warnings = decode(data)
    units = (TextUnit(text),) if text.strip() else ()
    return Parsed(units, warnings=warnings)
