"""``embedd model build``: convert a Hugging Face BERT directory (default: the packaged
all-MiniLM-L6-v2) to a GGUF file, with progress."""

from __future__ import annotations

from pathlib import Path

import structlog

from daemon.embed import convert as model
from daemon.embed.convert import OUT_TYPES, OutType
from daemon.service.progress import Progress

log = structlog.get_logger("embedd")


def output_path(out: Path | None, config_model_path: Path | None, out_type: OutType | None) -> Path:
    """Where to write: ``--out``, else the configured ``[model] path``, else ``models/NAME.TYPE.gguf``."""
    if out is not None:
        return out
    if config_model_path is not None:
        return config_model_path
    return Path("models") / model.default_model_filename(out_type or model.DEFAULT_OUT_TYPE)


def type_from_name(path: Path) -> OutType | None:
    """The weight type a file name asks for (``name.q8_0.gguf``), so --config paths build what they say."""
    suffixes = path.name.split(".")
    for kind in OUT_TYPES:
        if kind in suffixes[1:-1]:
            return kind
    return None


def build_command(
    out: Path,
    *,
    source: Path | None = None,
    out_type: OutType | None = None,
    name: str | None = None,
    force: bool = False,
) -> bool:
    """Build the model at ``out``; False (and a log line) when it exists and ``force`` is not set."""
    if out.exists() and not force:
        log.info("model_exists", path=str(out), hint="pass --force to rebuild it")
        return False
    src = source if source is not None else model.default_model_source()
    log.info("model_build_started", source=str(src), out=str(out))
    bar: Progress | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress("converting", total, unit="tensors")
        bar.advance(done - bar.done)

    kind = out_type or type_from_name(out) or model.DEFAULT_OUT_TYPE
    result = model.convert(src, out, kind, name=name, progress=on_progress)
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
    return True
