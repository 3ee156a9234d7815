"""Running a format parser in the sandboxed worker process, and reading its answer back.

The checked file descriptor itself becomes the worker's stdin, so the child never resolves the
path again (no symlink or rename races) and nothing is copied through a pipe. The worker caps
its own address space and CPU time; here the wall-clock time is capped and every way the worker
can end (an answer, an error document, a crash, a kill) becomes text units or one
``ExtractError`` whose reason says what to do.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daemon.errors import ExtractError
from daemon.ingest.units import Parsed, TextUnit

_MIB = 1024 * 1024
WORKER_SCRIPT = Path(__file__).with_name("worker.py")


@dataclass(frozen=True)
class SandboxLimits:
    """What one parse in the worker may take: wall-clock seconds and bytes of address space."""

    timeout_s: float
    memory_bytes: int
    max_html_bytes: int
    # The most text (characters) one document may yield: a small zip can expand to hundreds
    # of MB of text, which the daemon would hold and queue for hours of embedding.
    max_text_chars: int = 100 * _MIB
    # What the format's parser needs besides the bytes (a source file's language, chunk size).
    parser_options: Mapping[str, object] = field(default_factory=dict)


def _worker_argv(fmt: str, limits: SandboxLimits) -> list[str]:
    """Command line of the worker (a seam for tests).

    The worker runs by file path rather than ``-m`` so the ``daemon`` package (and whatever it
    imports) is never loaded in the child; ``-P`` keeps the script's folder off ``sys.path``.
    """
    cpu_seconds = math.ceil(limits.timeout_s) + 1
    options = json.dumps(
        {
            "max_html_bytes": limits.max_html_bytes,
            "max_text_chars": limits.max_text_chars,
            **limits.parser_options,
        }
    )
    return [
        sys.executable, "-P", str(WORKER_SCRIPT), fmt, str(limits.memory_bytes), str(cpu_seconds), options
    ]  # fmt: skip


def run_worker(path: Path, fd: int, fmt: str, limits: SandboxLimits) -> Parsed:
    """Parse the open file ``fd`` (at ``path``) as ``fmt`` in the worker; ``ExtractError`` if it fails."""
    try:
        proc = subprocess.Popen(
            _worker_argv(fmt, limits), stdin=fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise ExtractError(path, f"cannot start the extraction worker: {exc}") from exc
    try:
        out, err = proc.communicate(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ExtractError(
            path,
            f"timed out after {limits.timeout_s:g}s; raise daemon.extract_timeout_s if the file is just big",
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return _parse_result(path, proc.returncode, out, err, limits)


def _memory_reason(limits: SandboxLimits) -> str:
    return (
        f"exceeded memory limit ({limits.memory_bytes / _MIB:.0f} MB); "
        "raise daemon.extract_memory_mb if the file is just big"
    )


def _crash_reason(returncode: int, err: bytes, limits: SandboxLimits) -> str:
    stderr = err.decode("utf-8", "replace").strip()
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return _memory_reason(limits)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"extraction worker died from {name}"
    last_line = stderr.splitlines()[-1] if stderr else "no error output"
    return f"extraction worker failed (exit status {returncode}): {last_line}"


def _parse_result(path: Path, returncode: int, out: bytes, err: bytes, limits: SandboxLimits) -> Parsed:
    if returncode != 0:
        raise ExtractError(path, _crash_reason(returncode, err, limits))
    try:
        result = json.loads(out.decode("utf-8"))
    except ValueError as exc:
        raise ExtractError(path, f"extraction worker returned malformed output: {exc}") from exc
    if not isinstance(result, dict):
        raise ExtractError(path, "extraction worker returned malformed output: not an object")
    if result.get("status") == "error":
        kind, detail = result.get("kind"), str(result.get("detail", ""))
        if kind == "memory":
            raise ExtractError(path, _memory_reason(limits))
        if kind == "failed":
            raise ExtractError(path, f"could not be parsed ({detail})")
        raise ExtractError(path, detail or f"refused ({kind})")
    units, warnings, title = result.get("units"), result.get("warnings"), result.get("title")
    if not isinstance(units, list) or not isinstance(warnings, list) or not isinstance(title, str | None):
        raise ExtractError(path, "extraction worker returned malformed output: missing units")
    parsed: list[TextUnit] = []
    for entry in units:
        match entry:
            case [int() | None as page, str() | None as section, str() as text]:
                parsed.append(TextUnit(text, page, section))
            case _:
                raise ExtractError(path, f"extraction worker returned a malformed unit: {entry!r:.80}")
    return Parsed(tuple(parsed), title=title, warnings=tuple(str(w) for w in warnings))
