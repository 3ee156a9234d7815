"""What every format parser returns, and how it refuses a file.

The format modules of this package (``text``, ``markdown``, ``pdf``, ``html``, ``docx``, ``pptx``,
``odt``, ``epub``, ``rst`` and their helpers) are *standalone*: they import only the standard
library, their parsing library and each other (relatively), never ``daemon``. That is what lets
the sandboxed worker (``worker.py``) load them in a fresh interpreter without the daemon's
package, and what keeps a hostile file's blast radius to that one process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TextUnit:
    """A piece of a file's text that no chunk may straddle.

    ``page`` is the 1-based PDF page or PowerPoint slide; ``section`` the heading path it sits
    under (``"# A > ## B"``; for an EPUB the chapter first). Both None when the format has none.
    """

    text: str
    page: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class Parsed:
    """The text units of one document, its own title if it declares one, and non-fatal problems."""

    units: tuple[TextUnit, ...]
    title: str | None = None
    warnings: tuple[str, ...] = field(default=())


# Why a document is refused; the daemon turns each into a reason that says what to do.
CORRUPT = "corrupt"  # not what its name says, damaged, truncated, malformed XML
ENCRYPTED = "encrypted"  # needs a password (or DRM)
LIMIT = "limit"  # a safety limit: zip bomb, entity declarations, oversized structure
UNSUPPORTED = "unsupported"  # a real file of a kind we do not read (a legacy .doc renamed .docx)
BINARY = "binary"  # a "text" file that holds NUL bytes
KINDS = (CORRUPT, ENCRYPTED, LIMIT, UNSUPPORTED, BINARY)


class Refused(Exception):
    """A file a parser will not (or cannot) read; ``detail`` is the user-facing reason."""

    def __init__(self, kind: str, detail: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown refusal kind {kind!r}")
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


def clean_text(text: str) -> str:
    """``text`` without NULs and lone surrogates, which neither JSON nor a tokenizer takes."""
    return _LONE_SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its chain of causes) means the memory limit was hit.

    Libraries wrap MemoryError (pypdf does); a lazy import under the address-space limit fails
    to map its shared object instead of raising MemoryError.
    """
    seen: BaseException | None = exc
    for _ in range(16):  # bounded: a chain of causes can, in principle, loop
        if seen is None:
            return False
        if isinstance(seen, MemoryError):
            return True
        message = str(seen)
        if isinstance(seen, ImportError | OSError) and (
            "failed to map segment" in message or "Cannot allocate memory" in message
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
