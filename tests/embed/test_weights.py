"""Picking the faster exact weight type, and where `embedd model build` puts the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from daemon.commands.model import build_command, output_path, type_from_name, typed_path
from daemon.embed.convert import OutType
from daemon.embed.gguf import check_gguf
from daemon.embed.weights import Timing, pick, sample_texts, time_types


def _timings(f32: float, f16: float) -> dict[OutType, Timing]:
    return {"f32": Timing("f32", f32, 3), "f16": Timing("f16", f16, 3)}


def test_f16_is_picked_only_when_clearly_faster() -> None:
    assert pick(_timings(1000, 1120)).out_type == "f16"
    assert pick(_timings(1000, 1020)).out_type == "f32", "a tie keeps the reference-exact f32"
    assert pick(_timings(1200, 1000)).out_type == "f32"
    chosen = pick(_timings(1000, 1120))
    assert chosen.rate("f16") == 1120 and "1.12x" in chosen.reason


def test_sample_texts_are_fixed_and_chunk_sized() -> None:
    texts = sample_texts()
    assert texts == sample_texts() and len(texts) == 16
    assert len(set(texts)) == len(texts)
    assert all(400 <= len(t) <= 600 for t in texts)


def test_timing_real_models(default_model: Path, f16_model: Path) -> None:
    timings = time_types({"f32": default_model, "f16": f16_model}, seconds=0.2, min_rounds=2)
    assert set(timings) == {"f32", "f16"}
    for kind, timing in timings.items():
        assert timing.out_type == kind and timing.rounds >= 2 and timing.tokens_per_s > 0


def test_output_paths() -> None:
    assert output_path(None, None) == Path("models/all-MiniLM-L6-v2.gguf")
    assert output_path(None, Path("/m/x.f16.gguf")) == Path("/m/x.f16.gguf")
    assert output_path(Path("o.gguf"), Path("/m/x.gguf")) == Path("o.gguf")
    assert typed_path(Path("models/m.gguf"), "f16") == Path("models/m.f16.gguf")
    assert typed_path(Path("models/m"), "f32") == Path("models/m.f32.gguf")
    assert type_from_name(Path("models/m.q8_0.gguf")) == "q8_0"
    assert type_from_name(Path("models/all-MiniLM-L6-v2.gguf")) is None


def test_an_explicit_type_links_the_stable_name(tmp_path: Path) -> None:
    out = tmp_path / "models" / "m.gguf"
    with structlog.testing.capture_logs() as logs:
        assert build_command(out, out_type="f16")
    assert out.is_symlink() and out.readlink() == Path("m.f16.gguf")
    check_gguf(out)
    assert not any(e["event"] == "model_type_timing" for e in logs), "--type skips the timing"
    (built,) = (e for e in logs if e["event"] == "model_built")
    assert built["type"] == "f16" and built["file"] == str(tmp_path / "models" / "m.f16.gguf")
    # Rebuilt as another type with --force: the link moves, the file it pointed to stays.
    assert build_command(out, out_type="f32", force=True)
    assert out.readlink() == Path("m.f32.gguf") and (tmp_path / "models" / "m.f16.gguf").exists()


def test_a_typed_name_is_written_as_is(tmp_path: Path) -> None:
    out = tmp_path / "m.f16.gguf"
    assert build_command(out)
    assert not out.is_symlink() and check_gguf(out).get_int("general.file_type", -1) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.f16.gguf"]


def test_cli_build_times_both_types_and_keeps_the_faster(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = tmp_path / "models" / "all-MiniLM-L6-v2.gguf"
    cmd = [sys.executable, "-m", "daemon.cli", "--log-format", "json", "model", "build", "--out", str(out)]
    proc = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    events = {e["event"]: e for e in map(json.loads, proc.stderr.splitlines()) if e.get("event")}
    picked = events["model_type_picked"]
    assert picked["type"] in ("f32", "f16")
    assert picked["f32_tokens_per_s"] > 0 and picked["f16_tokens_per_s"] > 0
    ratio = picked["f16_tokens_per_s"] / picked["f32_tokens_per_s"]
    assert (picked["type"] == "f16") == (ratio >= 1.03) or abs(ratio - 1.03) < 0.002
    assert out.readlink() == Path(f"all-MiniLM-L6-v2.{picked['type']}.gguf")
    assert events["model_built"]["type"] == picked["type"]
    check_gguf(out)
    # Only the link and the chosen file are left: no candidate, no temp file.
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, f"all-MiniLM-L6-v2.{picked['type']}.gguf"]
    )


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_the_example_config_path_loads_whatever_type_was_picked(
    kind: OutType, tmp_path: Path, default_model: Path, f16_model: Path
) -> None:
    """The stable name works like a file for everything that opens the model."""
    from daemon.embed.embedder import LlamaEmbedder

    target = tmp_path / f"all-MiniLM-L6-v2.{kind}.gguf"
    target.symlink_to(default_model if kind == "f32" else f16_model)
    link = tmp_path / "all-MiniLM-L6-v2.gguf"
    link.symlink_to(target.name)
    emb = LlamaEmbedder(link)
    try:
        assert emb.embed(["a link is a file"]).shape == (1, 384)
    finally:
        emb.close()
