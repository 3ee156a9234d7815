"""Child-process side of PDF extraction: one PDF on stdin, one JSON document on stdout.

``daemon.ingest.extract`` runs this file as a script in a fresh interpreter (never as a
fork of the daemon), passes the already opened PDF as fd 0 and reads the result
from stdout. A hang, a crash or a decompression bomb therefore costs this
process, never the daemon. The module imports nothing from ``daemon`` and only
the standard library plus pypdf, so startup stays cheap (~0.1 s).

Usage: ``python pdfworker.py MEMORY_BYTES CPU_SECONDS < file.pdf``

Output (UTF-8 JSON, exit status 0):
``{"status": "ok", "pages": [[page_number, text], ...], "warnings": [...]}`` or
``{"status": "error", "kind": KIND, "detail": "..."}`` where KIND is one of
``corrupt``, ``encrypted``, ``memory``, ``limit``. Any other exit means the
worker crashed; the parent reports that from the exit status and stderr.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sys
from typing import BinaryIO

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

# pypdf can yield lone surrogates (broken ToUnicode maps) and NULs; neither
# survives UTF-8 JSON or an embedder's tokenizer.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_PYPDF_WARNINGS = 5

JsonDict = dict[str, object]


class _WarningCollector(logging.Handler):
    """Keeps pypdf's log warnings (deduplicated) so they reach the parent as data."""

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


def _lower_limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def _set_limits(memory_bytes: int, cpu_seconds: int) -> None:
    """Caps address space (decompression bombs) and CPU time (a worker orphaned by a
    crashed daemon still ends; the parent's wall-clock timeout always fires first).

    Hard limits are lowered too, so nothing in this process can raise them again.
    """
    _lower_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    # Soft CPU limit sends SIGXCPU, the hard one a second later SIGKILL.
    _lower_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)


def _clean(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    # A lazy import (of pypdf or the stdlib) under the address-space cap fails to
    # mmap its shared object rather than raising MemoryError.
    message = str(exc)
    return isinstance(exc, ImportError | OSError) and (
        "failed to map segment" in message or "Cannot allocate memory" in message
    )


def _classify(exc: BaseException) -> tuple[str, str]:
    """Maps an exception (and its causes; pypdf wraps MemoryError) to (kind, detail)."""
    seen: BaseException | None = exc
    for _ in range(16):  # bounded: a chain of causes can, in principle, loop
        if seen is None:
            break
        if _is_out_of_memory(seen):
            return "memory", ""
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, LimitReachedError):
        return "limit", str(exc)
    if isinstance(exc, FileNotDecryptedError):
        return "encrypted", ""
    if isinstance(exc, DependencyError):
        return "encrypted", f"cannot decrypt: {exc}"
    return "corrupt", f"{type(exc).__name__}: {exc}"


def _open(stream: BinaryIO) -> PdfReader:
    reader = PdfReader(stream)
    # Many "protected" PDFs only restrict printing/copying and open with an empty
    # user password; only a real password makes the file unreadable for us.
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise FileNotDecryptedError("needs a password")
    return reader


def _extract(stream: BinaryIO, collector: _WarningCollector) -> JsonDict:
    reader = _open(stream)
    page_count = len(reader.pages)
    pages: list[list[object]] = []
    warnings: list[str] = []
    failures = 0
    for index in range(page_count):
        try:
            text = reader.pages[index].extract_text()
        except Exception as exc:
            kind, detail = _classify(exc)
            if kind != "corrupt":
                raise
            # One unreadable page should not hide the rest of the document.
            failures += 1
            warnings.append(f"page {index + 1}: text not extracted ({detail})")
            continue
        text = _clean(text)
        if text.strip():
            pages.append([index + 1, text])
    if page_count and failures == page_count:
        return _error("corrupt", f"no page could be read; {warnings[0]}")
    return {"status": "ok", "pages": pages, "warnings": warnings + collector.summary()}


def _error(kind: str, detail: str) -> JsonDict:
    return {"status": "error", "kind": kind, "detail": detail}


def run(stream: BinaryIO) -> JsonDict:
    """Extracts every page's text from ``stream``; failures become an error document."""
    collector = _WarningCollector()
    pypdf_log = logging.getLogger("pypdf")
    pypdf_log.addHandler(collector)
    pypdf_log.propagate = False
    try:
        return _extract(stream, collector)
    except MemoryError:
        pass
    except Exception as exc:
        kind, detail = _classify(exc)
        if kind != "memory":
            return _error(kind, detail)
    # Answer only after leaving the handler: until then the traceback's frames
    # pin the huge buffers that caused the MemoryError.
    return _error("memory", "")


def main(argv: list[str]) -> int:
    """Entry point of the worker process; see the module docstring."""
    if len(argv) != 3:
        sys.stderr.write("usage: pdfworker.py MEMORY_BYTES CPU_SECONDS < file.pdf\n")
        return 2
    _set_limits(int(argv[1]), int(argv[2]))
    # fd 0 is the PDF itself (a regular file the parent opened), so it is
    # seekable and pypdf reads only the parts it needs.
    with open(0, "rb", closefd=False) as stream:
        result = run(stream)
    sys.stdout.buffer.write(json.dumps(result, ensure_ascii=False).encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through daemon.ingest.extract
    sys.exit(main(sys.argv))
