"""structlog setup: JSON lines under systemd or when asked, a readable console on a terminal.

All of the daemon's global logging state lives here: structlog's configuration, whether logs go
to a person (``is_console``), and what libraries' stdlib loggers do, changed only through the
functions below (``route_to_events`` for uvicorn's, ``silence`` for pymilvus'). Two pieces live
elsewhere, on purpose: llama.cpp's C-side log callback, which ``daemon.embed.llama`` sets as it
imports ``llama_cpp`` (before the library's first call), and pypdf's logger in
``daemon.ingest.pdf``, which runs only in the sandboxed worker: another process, which never
imports the ``daemon`` package (``daemon.ingest.worker``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal, TextIO, cast

import orjson
import structlog

LogFormat = Literal["auto", "json", "console"]
LEVELS = ("debug", "info", "warning", "error")

_console = False


def under_systemd() -> bool:
    """True when journald holds our stderr (systemd sets JOURNAL_STREAM for that)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    """``auto`` means console on a terminal (not under systemd), JSON lines otherwise."""
    if fmt != "auto":
        return fmt
    return "console" if stream.isatty() and not under_systemd() else "json"


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> str:
    """Configure structlog for the process; returns the format chosen ("json" or "console")."""
    global _console
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    out = stream if stream is not None else sys.stderr
    chosen = resolve_format(cast(LogFormat, fmt), out)
    _console = chosen == "console"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if _console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        shared += [structlog.processors.dict_tracebacks]
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return chosen


def is_console() -> bool:
    """True when logs go to a person at a terminal (progress bars are drawn then)."""
    return _console


def display_path(path: Path | str) -> str:
    """``path`` for logs: the bytes of a name that is not valid UTF-8 as ``\\xNN`` escapes.

    The OS hands such names over as lone surrogates (PEP 383), which UTF-8 JSON cannot carry.
    """
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _ToEvents(logging.Handler):
    """A library's stdlib log records as our ``event``: warnings and above as warnings, the rest at debug."""

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "debug"
        emit = getattr(structlog.get_logger("embedd"), level)
        emit(self.event, message=record.getMessage(), logger=record.name)


def route_to_events(names: tuple[str, ...], event: str) -> None:
    """Send what the stdlib loggers ``names`` say (INFO and up) to our log as ``event`` events,
    not to stderr as bare text (uvicorn's: a malformed request, say). Safe to call again."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToEvents) and h.event == event for h in logger.handlers):
            logger.handlers = [_ToEvents(event)]
        logger.propagate = False
        logger.setLevel(logging.INFO)


def silence(*names: str) -> None:
    """Keep the stdlib loggers ``names`` quiet below CRITICAL: libraries (pymilvus) that log each
    failure with a traceback of their own, which the caller reports as its own event."""
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
