"""structlog setup: JSON lines under systemd or when asked, a readable console on a terminal.

All global logging state lives here.
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
