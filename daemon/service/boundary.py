"""The worker's error boundary: an unexpected exception while handling one file costs that file."""

from __future__ import annotations

from pathlib import Path

import structlog

from daemon.log import display_path
from daemon.watch.events import FileEvent

log = structlog.get_logger("embedd")


def report_unexpected(event: FileEvent, source: str, exc: Exception) -> str:
    """Log ``exc`` at error level with its traceback, naming the file; returns it as a short text.

    Call from the ``except`` block, so the traceback is the one being handled.
    """
    path: Path = event.dest if event.dest is not None else event.path
    error = f"{type(exc).__name__}: {exc}"
    log.exception(
        "file_failed",
        path=display_path(path),
        source=source,
        kind=event.kind.value,
        error=error,
        hint="tried again when it changes; the worker goes on with the next file",
    )
    return error
