"""``embedd model build``: convert a Hugging Face BERT directory (default: the packaged
all-MiniLM-L6-v2) to a GGUF file, with progress.

Without ``--type``, and when the output's name says no type either, the weight type is picked
on this machine: f32 and f16 are both built and timed for a few seconds and the faster is
kept. The file's name always says its type: an output named without one
(``models/all-MiniLM-L6-v2.gguf``, what the example config and ``make run`` use) becomes a
symbolic link to ``models/all-MiniLM-L6-v2.<type>.gguf`` beside it, so a configuration names
a path that is stable on every CPU while ``ls -l`` shows what was chosen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import structlog

from daemon.embed import convert as model
from daemon.embed.convert import OUT_TYPES, ConvertResult, OutType
from daemon.service.progress import Progress

log = structlog.get_logger("embedd")


def output_path(out: Path | None, config_model_path: Path | None) -> Path:
    """Where to write: ``--out``, else the configured ``[model] path``, else ``models/NAME.gguf``."""
    if out is not None:
        return out
    if config_model_path is not None:
        return config_model_path
    return Path("models") / model.default_model_filename()


def type_from_name(path: Path) -> OutType | None:
    """The weight type a file name asks for (``name.q8_0.gguf``), so --config paths build what they say."""
    suffixes = path.name.split(".")
    for kind in OUT_TYPES:
        if kind in suffixes[1:-1]:
            return kind
    return None


def typed_path(out: Path, out_type: OutType) -> Path:
    """The file an untyped ``out`` links to: ``models/m.gguf`` -> ``models/m.f16.gguf``."""
    suffix = out.suffix or ".gguf"
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.{out_type}{suffix}")


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
    named = type_from_name(out)
    kind = out_type or named
    log.info("model_build_started", source=str(src), out=str(out), type=kind or "fastest of f32, f16")
    if named is not None:
        # The name says the type: write the file itself.
        result = _convert(src, out, kind or model.DEFAULT_OUT_TYPE, name)
    else:
        if kind is None:
            result = _pick_type(src, out, name)
        else:
            result = _convert(src, typed_path(out, kind), kind, name)
        _link(out, result.path)
    log.info(
        "model_built",
        path=str(out),
        file=str(result.path),
        type=result.out_type,
        pooling=result.pooling,
        tensors=result.tensors,
        mib=round(result.bytes / 2**20, 1),
    )
    return True


def _convert(src: Path, out: Path, kind: OutType, name: str | None) -> ConvertResult:
    bar: Progress | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(f"converting ({kind})", total, unit="tensors")
        bar.advance(done - bar.done)

    try:
        return model.convert(src, out, kind, name=name, progress=on_progress)
    finally:
        if bar is not None:
            bar.close()


def _pick_type(src: Path, out: Path, name: str | None) -> ConvertResult:
    """Build f32 and f16 beside ``out``, time them, keep the faster as ``typed_path(out, type)``."""
    from daemon.embed import weights

    candidates = {kind: out.with_name(f".{out.name}.candidate.{kind}.gguf") for kind in weights.EXACT_TYPES}
    try:
        built = {kind: _convert(src, path, kind, name) for kind, path in candidates.items()}
        log.info(
            "model_type_timing",
            types=list(candidates),
            seconds=weights.DEFAULT_SECONDS,
            hint="f32 and f16 are both exact; the faster on this CPU is kept (--type chooses)",
        )
        timings = weights.time_types(candidates)
        chosen = weights.pick(timings)
        log.info(
            "model_type_picked",
            type=chosen.out_type,
            f32_tokens_per_s=round(chosen.rate("f32")),
            f16_tokens_per_s=round(chosen.rate("f16")),
            reason=chosen.reason,
        )
        final = typed_path(out, chosen.out_type)
        os.replace(candidates[chosen.out_type], final)
        return dataclasses.replace(built[chosen.out_type], path=final)
    finally:
        for path in candidates.values():
            path.unlink(missing_ok=True)


def _link(out: Path, target: Path) -> None:
    """Make ``out`` a relative symbolic link to ``target`` (same folder), replacing it atomically."""
    tmp = out.with_name(f".{out.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
