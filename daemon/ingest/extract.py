"""Path -> text units: which parser reads a file, and opening it safely first.

The suffix decides the format (``FORMATS``); anything else is read as text. Every failure a
user's file can cause is an ``ExtractError`` naming the file and the reason. Files are opened
without following symlinks and without blocking (FIFOs, devices), and their size is checked on
the open descriptor before a byte is read. Text and Markdown are decoded here, in the daemon;
every other format (PDF, the zip-based .docx, .pptx, .odt and .epub, HTML, reST) is parsed in
the sandboxed worker (``sandbox``, ``worker``) under a time and memory limit, so a hostile or
broken document costs one file, never the daemon.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath

from daemon.errors import ExtractError
from daemon.ingest import generated, markdown, text
from daemon.ingest.sandbox import SandboxLimits, run_worker
from daemon.ingest.units import Parsed, Refused, TextUnit

__all__ = ["FORMATS", "ExtractLimits", "Extracted", "Format", "TextUnit", "extract", "extraction_version"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Format:
    """How files of one kind are read.

    ``version`` goes up whenever the text or the splitting this format gives changes, so the
    files it read before are indexed again (and only those; see ``extraction_version``).
    """

    name: str
    sandboxed: bool
    version: int = 1
    language: str | None = None  # the tree-sitter grammar of a source-code format


# Version 1 is how every file was read before formats had versions: as text, a PDF by pypdf.
# A format that reads its files differently starts at 2, so a file an older embedd read as
# text (a Markdown file in one piece, an HTML page with its tags, if `include` selected it) is
# indexed again; any later change to a format's text or splitting adds one. Version 3 of the
# formats with headings joins a chunk that is only a heading to the text it heads (chunker).
TEXT = Format("text", sandboxed=False)
MARKDOWN = Format("markdown", sandboxed=False, version=3)
HTML = Format("html", sandboxed=True, version=3)
FORMATS: dict[str, Format] = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".pdf": Format("pdf", sandboxed=True),
    ".html": HTML,
    ".htm": HTML,
    ".xhtml": HTML,
    ".docx": Format("docx", sandboxed=True, version=3),
    ".pptx": Format("pptx", sandboxed=True, version=2),
    ".odt": Format("odt", sandboxed=True, version=3),
    ".epub": Format("epub", sandboxed=True, version=3),
    ".rst": Format("rst", sandboxed=True, version=3),
}
"""File suffix (lower case) -> its format; any other suffix is read as text."""

_CODE_SUFFIXES: dict[str, str] = {
    **dict.fromkeys((".py", ".pyi"), "python"),
    **dict.fromkeys((".js", ".mjs", ".cjs", ".jsx"), "javascript"),
    **dict.fromkeys((".ts", ".mts", ".cts"), "typescript"),
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    **dict.fromkeys((".c", ".h"), "c"),
    **dict.fromkeys((".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"), "cpp"),
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    **dict.fromkeys((".kt", ".kts"), "kotlin"),
    ".swift": "swift",
    **dict.fromkeys((".sh", ".bash"), "bash"),
    ".sql": "sql",
}
# Source code was read as text (version 1) before; split along its syntax it is version 2.
FORMATS.update(
    {
        suffix: Format(f"code-{lang}", sandboxed=True, version=2, language=lang)
        for suffix, lang in _CODE_SUFFIXES.items()
    }
)


def format_of(path: PurePath) -> Format:
    """The format a file is read as, by its suffix (any case)."""
    return FORMATS.get(path.suffix.lower(), TEXT)


def extraction_version(path: PurePath) -> int:
    """The version of the extraction that reads ``path`` now (recorded with each indexed file)."""
    return format_of(path).version


@dataclass(frozen=True)
class Extracted:
    """The text units of one file, the title it declares, and non-fatal problems found on the way."""

    units: tuple[TextUnit, ...]
    warnings: tuple[str, ...]
    title: str | None = None


@dataclass(frozen=True)
class ExtractLimits:
    """Per-file limits: file size; the worker's wall-clock time and address space; HTML read."""

    max_bytes: int
    timeout_s: float
    memory_bytes: int
    max_html_bytes: int = 20 * _MIB
    chunk_chars: int = 500  # source code is split along its syntax into pieces of at most this

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_html_bytes) < 0 or self.timeout_s <= 0 or self.memory_bytes <= 0:
            raise ValueError(f"invalid extract limits: {self}")


def extract(path: Path, limits: ExtractLimits) -> Extracted:
    """Returns the text units of ``path``, read as the format its suffix names.

    Raises ``ExtractError`` for a file that is not a readable regular file, is too large, is
    binary, or is a document that is corrupt, encrypted, too slow or too big to parse. An
    empty or whitespace-only file gives zero units, not an error.
    """
    _reject_special_file(path)
    fmt = format_of(path)
    fd = _open_regular_file(path, limits.max_bytes)
    try:
        if fmt.sandboxed:
            # A document's text is capped as a text file's size is (daemon.max_file_mb).
            options: dict[str, object] = {}
            if fmt.language:
                options = {"language": fmt.language, "chunk_chars": limits.chunk_chars, "name": path.name}
            sandbox = SandboxLimits(
                limits.timeout_s, limits.memory_bytes, limits.max_html_bytes, limits.max_bytes, options
            )
            parsed = run_worker(path, fd, "code" if fmt.language else fmt.name, sandbox)
        else:
            data = _read_all(path, fd, limits.max_bytes)
            try:
                generated.refuse(path.name, data)
                parsed = markdown.parse(data) if fmt is MARKDOWN else text.parse(data)
            except Refused as exc:
                raise ExtractError(path, exc.detail) from None
    finally:
        os.close(fd)
    return _extracted(parsed)


def _extracted(parsed: Parsed) -> Extracted:
    units = tuple(
        TextUnit(text.normalise_newlines(u.text), u.page, u.section) for u in parsed.units if u.text.strip()
    )
    return Extracted(units, parsed.warnings, parsed.title)


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
