"""The GGUF converter and model-file checks, on the real packaged model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from daemon.embed.convert import convert
from daemon.embed.embedder import LlamaEmbedder
from daemon.embed.gguf import check_gguf
from daemon.errors import ConversionError, ModelError


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.fields[key]
    return field.contents()


def test_f16_metadata_is_what_llama_cpp_needs(f16_model: Path) -> None:
    reader = gguf.GGUFReader(str(f16_model))
    assert _field(reader, "general.architecture") == "bert"
    assert _field(reader, "general.name") == "all-MiniLM-L6-v2"
    assert _field(reader, "bert.context_length") == 512
    assert _field(reader, "bert.embedding_length") == 384
    assert _field(reader, "bert.feed_forward_length") == 1536
    assert _field(reader, "bert.block_count") == 6
    assert _field(reader, "bert.attention.head_count") == 12
    assert _field(reader, "bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    assert _field(reader, "bert.attention.causal") is False
    assert _field(reader, "bert.pooling_type") == int(gguf.PoolingType.MEAN)
    assert _field(reader, "tokenizer.ggml.model") == "bert"
    assert _field(reader, "tokenizer.ggml.token_type_count") == 2
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert isinstance(tokens, list) and isinstance(types, list)
    assert len(tokens) == len(types) == 30522
    # WordPiece in llama.cpp's phantom-space form: word starts carry U+2581, "##" pieces are bare.
    assert tokens[101] == "[CLS]" and types[101] == int(gguf.TokenType.CONTROL)
    assert tokens[7592] == "\u2581hello" and types[7592] == int(gguf.TokenType.NORMAL)
    assert "##ing" not in tokens and "ing" in tokens
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 101
    assert _field(reader, "tokenizer.ggml.seperator_token_id") == 102
    names = {t.name for t in reader.tensors}
    assert len(names) == 5 + 16 * 6
    assert {
        "token_embd.weight",
        "position_embd.weight",
        "token_types.weight",
        "token_embd_norm.bias",
    } <= names
    assert "blk.5.layer_output_norm.weight" in names
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32


def test_q8_0_is_quantized_and_smaller(f16_model: Path, q8_model: Path) -> None:
    reader = gguf.GGUFReader(str(q8_model))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert q8_model.stat().st_size < 0.65 * f16_model.stat().st_size


def test_f32_output(model_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.f32.gguf"
    result = convert(model_source, out, "f32")
    assert result.out_type == "f32" and result.pooling == "mean"
    reader = gguf.GGUFReader(str(out))
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert not list(tmp_path.glob("*.tmp"))


def _copy_model(src: Path, dst: Path) -> Path:
    """A writable copy of the model directory with the large weight file linked, not copied."""
    dst.mkdir()
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        elif item.name == "model.safetensors":
            (dst / item.name).symlink_to(item)
        else:
            shutil.copy(item, dst / item.name)
    return dst


def test_cls_pooling_is_read_from_pooling_config(model_source: Path, tmp_path: Path) -> None:
    src = _copy_model(model_source, tmp_path / "cls-model")
    pooling = src / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    cfg["pooling_mode_mean_tokens"] = False
    cfg["pooling_mode_cls_token"] = True
    pooling.write_text(json.dumps(cfg))
    out = tmp_path / "cls.gguf"
    assert convert(src, out, "f16").pooling == "cls"
    reader = gguf.GGUFReader(str(out))
    assert _field(reader, "bert.pooling_type") == int(gguf.PoolingType.CLS)
    assert _field(reader, "general.name") == "cls-model"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no-config", "missing config.json"),
        ("no-vocab", "missing vocab.txt"),
        ("no-weights", "missing model.safetensors"),
        ("not-bert", "not a BERT model"),
        ("max-pooling", "unsupported pooling"),
        ("bad-weights", "unreadable safetensors"),
        ("short-vocab", "config.json says vocab_size"),
    ],
)
def test_conversion_errors_are_clear(model_source: Path, tmp_path: Path, breakage: str, message: str) -> None:
    src = _copy_model(model_source, tmp_path / "broken")
    if breakage == "no-config":
        (src / "config.json").unlink()
    elif breakage == "no-vocab":
        (src / "vocab.txt").unlink()
    elif breakage == "no-weights":
        (src / "model.safetensors").unlink()
    elif breakage == "not-bert":
        cfg = json.loads((src / "config.json").read_text())
        cfg["model_type"] = "gpt2"
        cfg["architectures"] = ["GPT2LMHeadModel"]
        (src / "config.json").write_text(json.dumps(cfg))
    elif breakage == "max-pooling":
        (src / "1_Pooling" / "config.json").write_text(
            json.dumps({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False})
        )
    elif breakage == "bad-weights":
        (src / "model.safetensors").unlink()
        (src / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    elif breakage == "short-vocab":
        lines = (src / "vocab.txt").read_text().splitlines()
        (src / "vocab.txt").write_text("\n".join(lines[:-10]) + "\n")
    out = tmp_path / "out.gguf"
    with pytest.raises(ConversionError, match=message):
        convert(src, out, "f16")
    assert not out.exists()
    assert not list(tmp_path.glob(".out.gguf.*"))


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not a directory"):
        convert(tmp_path / "nope", tmp_path / "out.gguf")


def test_check_gguf_rejects_missing_garbage_and_truncated(f16_model: Path, tmp_path: Path) -> None:
    check_gguf(f16_model)
    with pytest.raises(ModelError, match="file not found"):
        check_gguf(tmp_path / "missing.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 100)
    with pytest.raises(ModelError, match="not a GGUF file"):
        check_gguf(garbage)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(f16_model.read_bytes()[: f16_model.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"truncated|corrupt"):
        check_gguf(truncated)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(f16_model.read_bytes()[:64])
    with pytest.raises(ModelError, match=r"truncated|corrupt"):
        check_gguf(header_only)


@pytest.mark.parametrize("fixture", ["default_model", "f16_model", "q8_model"])
def test_header_reader_agrees_with_gguf_py(fixture: str, request: pytest.FixtureRequest) -> None:
    """The fast header check reads what gguf-py reads, and finds the tensor data's true end."""
    path: Path = request.getfixturevalue(fixture)
    header = check_gguf(path)
    reader = gguf.GGUFReader(str(path))
    scalars = {
        name: _field(reader, name)
        for name, field in reader.fields.items()
        if field.types[:1] != [gguf.GGUFValueType.ARRAY] and not name.startswith("GGUF.")
    }
    assert dict(header.metadata) == scalars
    assert header.tensors == len(reader.tensors)
    assert header.data_end == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert header.data_end <= path.stat().st_size
    assert header.get_int("bert.context_length", 0) == 512
    assert header.get_str("general.architecture") == "bert"


def test_embedder_refuses_a_truncated_model_without_crashing(f16_model: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(f16_model.read_bytes()[:1_000_000])
    with pytest.raises(ModelError):
        LlamaEmbedder(truncated)


def test_cli_model_build_writes_then_keeps(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = tmp_path / "models" / "m.gguf"
    cmd = [sys.executable, "-m", "daemon.cli", "--log-format", "json", "model", "build", "--out", str(out)]
    first = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    assert '"event":"model_built"' in first.stderr
    check_gguf(out)
    mtime = out.stat().st_mtime_ns
    second = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    assert '"event":"model_exists"' in second.stderr
    assert out.stat().st_mtime_ns == mtime


def test_cli_model_build_bad_source_exits_3(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "daemon.cli",
        "--log-format",
        "json",
        "model",
        "build",
        "--source",
        str(tmp_path),
        "--out",
        str(tmp_path / "x.gguf"),
    ]
    proc = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3
    assert "missing config.json" in proc.stderr


@pytest.mark.parametrize(("umask", "mode"), [("022", 0o644), ("027", 0o640)])
def test_cli_model_build_writes_the_model_as_the_umask_says(
    tmp_path: Path, cli_env: dict[str, str], umask: str, mode: int
) -> None:
    """Found in issue 18: mkstemp's 0600 survived the rename, so a model built by one user could
    not be read by the service's. The umask is set in the child's shell (a test changing its own
    would race other threads)."""
    out = tmp_path / "models" / "all-MiniLM-L6-v2.gguf"
    kind = "f32" if umask == "022" else "f16"
    build = f'umask {umask} && exec "$0" -m daemon.cli model build --type {kind} --out "$1"'
    proc = subprocess.run(
        ["sh", "-c", build, sys.executable, str(out)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    typed = out.with_name(f"all-MiniLM-L6-v2.{kind}.gguf")
    assert out.is_symlink() and out.resolve() == typed
    assert typed.stat().st_mode & 0o7777 == mode
    assert out.stat().st_mode & 0o7777 == mode  # through the link
    check_gguf(out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, typed.name])  # no temp left
