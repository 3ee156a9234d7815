"""The sandboxed worker: one document on stdin, its text units as one JSON document on stdout.

``daemon.ingest.sandbox`` runs this file as a script in a fresh interpreter (never a fork of
the daemon) with ``-P``, passes the already opened file as fd 0 and reads the result from
stdout. A hang, a crash, a zip bomb or a parser bug therefore costs this process, never the
daemon: the address space and CPU time are capped here, the wall-clock time by the parent.

The worker imports only the standard library and the format parsers of its own folder, which
are standalone (see ``units``): they are loaded as the private package ``_embedd_formats``, so
neither the ``daemon`` package nor anything it imports is ever loaded here, and ``-P`` keeps
this folder off ``sys.path`` so a format module named ``html`` cannot shadow the standard
library's.

Usage: ``python -P worker.py FORMAT MEMORY_BYTES CPU_SECONDS [OPTIONS_JSON] < file``

Output (UTF-8 JSON, exit status 0):
``{"status": "ok", "units": [[page, section, text], ...], "title": ..., "warnings": [...]}`` or
``{"status": "error", "kind": KIND, "detail": "..."}``, KIND being one of ``units.KINDS``, or
``memory`` (the address-space limit was hit) or ``failed`` (the parser itself failed). Any other
exit means the worker crashed; the parent reports that from the exit status and stderr.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import resource
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

PACKAGE = "_embedd_formats"
FORMATS = ("pdf", "docx", "pptx", "odt", "epub", "html", "rst", "markdown", "text", "code")

JsonDict = dict[str, Any]


def load_formats() -> ModuleType:
    """Register this folder as the package ``_embedd_formats`` (without running any __init__)."""
    if PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(Path(__file__).resolve().parent)]
        sys.modules[PACKAGE] = package
    return sys.modules[PACKAGE]


def _lower_limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def set_limits(memory_bytes: int, cpu_seconds: int) -> None:
    """Cap address space (bombs) and CPU time (a worker orphaned by a crashed daemon still ends;
    the parent's wall-clock timeout always fires first). Hard limits are lowered too, so nothing
    in this process can raise them again."""
    _lower_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    # Soft CPU limit sends SIGXCPU, the hard one a second later SIGKILL.
    _lower_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)


def _parse(fmt: str, module: ModuleType, stream: BinaryIO, options: JsonDict) -> Any:
    if fmt == "html":
        return module.parse(stream, int(options.get("max_html_bytes", 20 * 1024 * 1024)))
    if fmt in ("rst", "markdown", "text"):
        return module.parse(stream.read())
    if fmt == "code":
        data = stream.read()
        sys.modules[f"{PACKAGE}.generated"].refuse(str(options.get("name", "")), data)
        return module.parse(data, str(options["language"]), int(options.get("chunk_chars", 500)))
    return module.parse(stream)


def run(fmt: str, module: ModuleType, stream: BinaryIO, options: JsonDict) -> JsonDict:
    """Parse ``stream`` as ``fmt``; every failure becomes an error document."""
    units = sys.modules[f"{PACKAGE}.units"]
    try:
        parsed = _parse(fmt, module, stream, options)
    except MemoryError:
        parsed = None
    except units.Refused as exc:
        return {"status": "error", "kind": exc.kind, "detail": units.clean_text(exc.detail)}
    except Exception as exc:
        if not units.out_of_memory(exc):
            detail = units.clean_text(f"{type(exc).__name__}: {exc}")
            return {"status": "error", "kind": "failed", "detail": detail}
        parsed = None
    if parsed is None:
        # Answer only after leaving the handler: until then the traceback's frames pin the
        # huge buffers that caused the MemoryError.
        return {"status": "error", "kind": "memory", "detail": ""}
    clean = units.clean_text
    budget = int(options.get("max_text_chars", 100 * 1024 * 1024))
    kept, total, warnings = [], 0, [clean(w) for w in parsed.warnings]
    for u in parsed.units:
        text = clean(u.text)
        total += len(text)
        if total > budget:
            text = text[: max(0, budget - (total - len(text)))]
            warnings.append(
                f"the document's text is over {budget / 1024 / 1024:.0f} M characters; only the first "
                f"{budget / 1024 / 1024:.0f} M were read (raise daemon.max_file_mb to index all of it)"
            )
        kept.append([u.page, clean(u.section) if u.section else None, text])
        if total > budget:
            break
    return {
        "status": "ok",
        "units": kept,
        "title": clean(parsed.title) if parsed.title else None,
        "warnings": warnings,
    }


def main(argv: list[str]) -> int:
    """Entry point of the worker process; see the module docstring."""
    if len(argv) not in (4, 5) or argv[1] not in FORMATS:
        sys.stderr.write(
            f"usage: worker.py {{{','.join(FORMATS)}}} MEMORY_BYTES CPU_SECONDS [OPTIONS_JSON] < file\n"
        )
        return 2
    fmt = argv[1]
    options = json.loads(argv[4]) if len(argv) == 5 else {}
    load_formats()
    # Imported before the limits, like the interpreter itself: what they cap is the parsing.
    importlib.import_module(f"{PACKAGE}.units")
    importlib.import_module(f"{PACKAGE}.generated")
    module = importlib.import_module(f"{PACKAGE}.{fmt}")
    set_limits(int(argv[2]), int(argv[3]))
    # fd 0 is the document itself (a regular file the parent opened and checked), so it is
    # seekable, and zipfile and pypdf read only the parts they need.
    with open(0, "rb", closefd=False) as stream:
        result = run(fmt, module, stream, options)
    sys.stdout.buffer.write(json.dumps(result, ensure_ascii=False).encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through daemon.ingest.sandbox
    sys.exit(main(sys.argv))
