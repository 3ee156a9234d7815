"""PDF -> one unit per page that has text (``page`` is its 1-based number), read with pypdf.

A page that cannot be read costs that page (a warning says which), not the document; pypdf's
own warnings (a recovered xref table ...) become warnings too. A PDF that needs a password is
refused as encrypted; many "protected" PDFs only restrict printing or copying and open with an
empty password, and are read. Runs only in the sandboxed worker. Standalone (see ``units``).
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

from .units import CORRUPT, ENCRYPTED, LIMIT, Parsed, Refused, TextUnit, clean_text, out_of_memory

_MAX_PYPDF_WARNINGS = 5


class _WarningCollector(logging.Handler):
    """Keeps pypdf's log warnings (deduplicated) so they reach the daemon as data."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not abort the extraction
            message = str(record.msg)
        if message in self.messages:
            return
        if len(self.messages) < _MAX_PYPDF_WARNINGS:
            self.messages.append(message)
        else:
            self.dropped += 1

    def summary(self) -> list[str]:
        out = [f"pypdf: {m}" for m in self.messages]
        if self.dropped:
            out.append(f"pypdf: {self.dropped} more distinct warnings not shown")
        return out


def _refusal(exc: Exception) -> Refused:
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, LimitReachedError):
        return Refused(
            LIMIT, f"exceeded a pypdf safety limit (decompression bomb or oversized structure?): {exc}"
        )
    if isinstance(exc, FileNotDecryptedError):
        return Refused(ENCRYPTED, "encrypted (needs a password)")
    if isinstance(exc, DependencyError):
        return Refused(ENCRYPTED, f"encrypted (cannot decrypt: {exc})")
    return Refused(CORRUPT, f"not a PDF / corrupt: {type(exc).__name__}: {exc}")


def _pages(stream: BinaryIO, collector: _WarningCollector) -> Parsed:
    reader = PdfReader(stream)
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise Refused(ENCRYPTED, "encrypted (needs a password)")
    count = len(reader.pages)
    units: list[TextUnit] = []
    warnings: list[str] = []
    failures = 0
    for index in range(count):
        try:
            text = reader.pages[index].extract_text()
        except Exception as exc:
            refused = _refusal(exc)
            if out_of_memory(exc) or refused.kind != CORRUPT:
                raise
            # One unreadable page should not hide the rest of the document.
            failures += 1
            warnings.append(f"page {index + 1}: text not extracted ({type(exc).__name__}: {exc})")
            continue
        text = clean_text(text)
        if text.strip():
            units.append(TextUnit(text, index + 1))
    if count and failures == count:
        raise Refused(CORRUPT, f"not a PDF / corrupt: no page could be read; {warnings[0]}")
    return Parsed(tuple(units), warnings=tuple(warnings + collector.summary()))


def parse(stream: BinaryIO) -> Parsed:
    """The pages of the PDF in ``stream``; ``Refused`` when it cannot be read.

    Exceptions that mean the memory limit was hit propagate as they are (see ``out_of_memory``).
    """
    collector = _WarningCollector()
    log = logging.getLogger("pypdf")
    log.addHandler(collector)
    log.propagate = False
    try:
        return _pages(stream, collector)
    except Exception as exc:
        if out_of_memory(exc):
            raise
        raise _refusal(exc) from None
    finally:
        log.removeHandler(collector)
