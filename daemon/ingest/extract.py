"""Path -> text units: UTF-8/UTF-16 text files as one unit, PDFs as one unit per page.

Every failure a user's file can cause is an ``ExtractError`` naming the file and
the reason. Files are opened without following symlinks and without blocking
(FIFOs, devices), and their size is checked on the open descriptor before a
byte is read. PDFs are parsed in a separate, resource-limited process
(``daemon/pdfworker.py``) so a hostile or broken PDF costs one file, never the
daemon.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import ExtractError

_MIB = 1024 * 1024
_WORKER_SCRIPT = Path(__file__).with_name("pdfworker.py")
# Lone surrogates in text decoded with "surrogateescape"/"surrogatepass" mark the
# bytes that were not valid in the file's encoding.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_ESCAPED_RUN = re.compile("[\udc80-\udcff]+")
_SURROGATE = re.compile("[\ud800-\udfff]")

_BOM_UTF8 = b"\xef\xbb\xbf"
_BOM_UTF16_LE = b"\xff\xfe"
_BOM_UTF16_BE = b"\xfe\xff"


@dataclass(frozen=True)
class TextUnit:
    """A piece of a file's text: a whole text file, or one PDF page (1-based ``page``)."""

    text: str
    page: int | None


@dataclass(frozen=True)
class Extracted:
    """The text units of one file, plus non-fatal problems found on the way."""

    units: tuple[TextUnit, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ExtractLimits:
    """Per-file resource limits: file size, PDF worker wall-clock time and address space."""

    max_bytes: int
    pdf_timeout_s: float
    pdf_memory_bytes: int

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.pdf_timeout_s <= 0 or self.pdf_memory_bytes <= 0:
            raise ValueError(f"invalid extract limits: {self}")


def extract(path: Path, limits: ExtractLimits) -> Extracted:
    """Returns the text units of ``path``; ``.pdf`` (any case) is a PDF, anything else text.

    Raises ``ExtractError`` for a file that is not a readable regular file, is too
    large, is binary, or is a PDF that is corrupt, encrypted, too slow or too big
    to parse. An empty or whitespace-only file gives zero units, not an error.
    """
    _reject_special_file(path)
    fd = _open_regular_file(path, limits.max_bytes)
    try:
        if path.suffix.lower() == ".pdf":
            return _extract_pdf(path, fd, limits)
        return _decode_text(path, _read_all(path, fd, limits.max_bytes))
    finally:
        os.close(fd)


# --- opening -----------------------------------------------------------------


def file_kind(mode: int) -> str | None:
    """Names a non-regular file type ("a FIFO (named pipe)"), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISLNK, "a symlink (symlinks are not followed)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, name in kinds:
        if test(mode):
            return name
    return "not a regular file"


def _os_error_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "file vanished (no such file) before it could be read"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: the daemon's user cannot read this file"
    if exc.errno == errno.ELOOP:
        return "is a symlink (symlinks are not followed)"
    if exc.errno == errno.ENXIO:
        return "is a socket or device without a reader (not a regular file)"
    return f"cannot open: {exc.strerror or exc}"


def _reject_special_file(path: Path) -> None:
    """Cheap pre-check so FIFOs, devices and symlinks are never even opened."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ExtractError(path, _os_error_reason(exc)) from exc
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise ExtractError(path, f"is {kind}; only regular files are indexed")


def _open_regular_file(path: Path, max_bytes: int) -> int:
    """Opens ``path`` for reading and checks type and size on the descriptor.

    The checks on the descriptor are the authoritative ones: the path may have
    been swapped for a FIFO or symlink since the pre-check. O_NONBLOCK keeps the
    open itself from waiting for a FIFO writer.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ExtractError(path, _os_error_reason(exc)) from exc
    try:
        st = os.fstat(fd)
        kind = file_kind(st.st_mode)
        if kind is not None:
            raise ExtractError(path, f"is {kind}; only regular files are indexed")
        if st.st_size > max_bytes:
            raise ExtractError(path, _too_large(st.st_size, max_bytes))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"file is {size / _MIB:.1f} MB ({size} bytes), over the limit of "
        f"{max_bytes / _MIB:.1f} MB ({max_bytes} bytes); raise daemon.max_file_mb to index it"
    )


def _read_all(path: Path, fd: int, max_bytes: int) -> bytes:
    # Read one byte past the limit: a file still growing after the fstat check
    # must not slip through unbounded.
    try:
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise ExtractError(path, f"read failed: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise ExtractError(path, _too_large(len(data), max_bytes))
    return data


# --- text --------------------------------------------------------------------


def _normalise_newlines(text: str) -> str:
    # A lone CR (classic Mac) is a line break too; left alone it would glue lines.
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


def _decode_text(path: Path, data: bytes) -> Extracted:
    if data.startswith(_BOM_UTF16_LE) or data.startswith(_BOM_UTF16_BE):
        codec = "utf-16-le" if data.startswith(_BOM_UTF16_LE) else "utf-16-be"
        text, warnings = _decode_utf16(data[2:], codec, offset=2)
        if "\x00" in text:
            raise ExtractError(path, "binary file (NUL characters in UTF-16 text); not indexed")
    else:
        nul = data.find(b"\x00")
        if nul >= 0:
            raise ExtractError(
                path,
                f"binary file (NUL bytes, first at byte {nul}); only UTF-8/UTF-16 text, "
                "Markdown and PDF files are indexed",
            )
        offset = len(_BOM_UTF8) if data.startswith(_BOM_UTF8) else 0
        text, warnings = _decode_utf8(data[offset:], offset)
    text = _normalise_newlines(text)
    units = (TextUnit(text=text, page=None),) if text.strip() else ()
    return Extracted(units=units, warnings=tuple(warnings))


# --- PDF ---------------------------------------------------------------------


def _worker_argv(limits: ExtractLimits) -> list[str]:
    """Command line of the PDF worker (a seam for tests).

    The worker runs by file path rather than ``-m daemon.ingest.pdfworker`` so the
    ``daemon`` package (and whatever it imports) is never loaded in the child;
    ``-P`` keeps the script's own directory off ``sys.path`` so sibling modules
    cannot shadow the standard library.
    """
    cpu_seconds = math.ceil(limits.pdf_timeout_s) + 1
    return [sys.executable, "-P", str(_WORKER_SCRIPT), str(limits.pdf_memory_bytes), str(cpu_seconds)]


def _extract_pdf(path: Path, fd: int, limits: ExtractLimits) -> Extracted:
    try:
        # The checked descriptor itself becomes the worker's stdin, so the child
        # never resolves the path again (no symlink/rename races) and nothing is
        # copied through a pipe.
        proc = subprocess.Popen(
            _worker_argv(limits),
            stdin=fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise ExtractError(path, f"cannot start the PDF worker: {exc}") from exc
    try:
        out, err = proc.communicate(timeout=limits.pdf_timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ExtractError(
            path,
            f"timed out after {limits.pdf_timeout_s:g}s; raise daemon.pdf_timeout_s if the PDF is just big",
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return _parse_worker_result(path, proc.returncode, out, err, limits)


def _memory_reason(limits: ExtractLimits) -> str:
    return (
        f"exceeded memory limit ({limits.pdf_memory_bytes / _MIB:.0f} MB); "
        "raise daemon.pdf_memory_mb if the PDF is just big"
    )


def _crash_reason(returncode: int, err: bytes, limits: ExtractLimits) -> str:
    stderr = err.decode("utf-8", "replace").strip()
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return _memory_reason(limits)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"PDF worker died from {name}"
    last_line = stderr.splitlines()[-1] if stderr else "no error output"
    return f"PDF worker failed (exit status {returncode}): {last_line}"


def _parse_worker_result(
    path: Path, returncode: int, out: bytes, err: bytes, limits: ExtractLimits
) -> Extracted:
    if returncode != 0:
        raise ExtractError(path, _crash_reason(returncode, err, limits))
    try:
        result = json.loads(out.decode("utf-8"))
    except ValueError as exc:
        raise ExtractError(path, f"PDF worker returned malformed output: {exc}") from exc
    if not isinstance(result, dict):
        raise ExtractError(path, "PDF worker returned malformed output: not an object")
    if result.get("status") == "error":
        raise ExtractError(path, _error_reason(result.get("kind"), str(result.get("detail", "")), limits))
    pages, warnings = result.get("pages"), result.get("warnings")
    if not isinstance(pages, list) or not isinstance(warnings, list):
        raise ExtractError(path, "PDF worker returned malformed output: missing pages")
    units: list[TextUnit] = []
    for entry in pages:
        match entry:
            case [int() as page, str() as text]:
                units.append(TextUnit(text=_normalise_newlines(text), page=page))
            case _:
                raise ExtractError(path, f"PDF worker returned a malformed page: {entry!r:.80}")
    return Extracted(units=tuple(units), warnings=tuple(str(w) for w in warnings))


def _error_reason(kind: object, detail: str, limits: ExtractLimits) -> str:
    if kind == "encrypted":
        return f"encrypted ({detail})" if detail else "encrypted (needs a password)"
    if kind == "memory":
        return _memory_reason(limits)
    if kind == "limit":
        return f"exceeded a pypdf safety limit (decompression bomb or oversized structure?): {detail}"
    return f"not a PDF / corrupt: {detail}"
