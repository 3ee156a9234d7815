"""The API's request bodies: reading them leniently, and checking each field (400 naming it)."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from daemon.errors import UsageError
from daemon.query.options import ALPHA, FUSION, RRF_K, Filters, Mode, SearchOptions, parse_time
from daemon.serve.answers import ApiError

# OpenAI's own limit of inputs per embeddings request.
MAX_INPUTS = 2048
SEARCH_FIELDS = frozenset(
    {"query", "k", "mode", "source_prefix", "formats", "modified_after", "modified_before", "group_by",
     "min_score", "fusion", "rrf_k", "alpha"}
)  # fmt: skip


def lenient_json(body: bytes | bytearray) -> object:
    """JSON orjson refuses only for a lone surrogate escape (``"\\ud800"``), which the standard
    library reads (and ``clean`` then replaces); None when it is not JSON at all."""
    try:
        return json.loads(bytes(body))
    except ValueError:
        return None


def clean(text: str) -> str:
    """Query text the model and SQLite can take: lone surrogates as U+FFFD, NUL as a space."""
    return _SURROGATES.sub("\ufffd", text).replace("\x00", " ")


_SURROGATES = re.compile("[\ud800-\udfff]")


def field(doc: dict[str, Any], name: str, types: type | tuple[type, ...], what: str) -> Any:
    value = doc.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise ApiError(400, f"{name} must be {what}", param=name)
    return value


def search_options(doc: dict[str, Any]) -> SearchOptions:
    """The search request's options; 400 naming the field for any bad one."""
    k = doc.get("k", 5)
    try:
        if isinstance(k, bool) or not isinstance(k, int):
            raise UsageError(f"k must be an integer, not {k!r}")
        prefix = field(doc, "source_prefix", str, "a string")
        formats = doc.get("formats")
        if isinstance(formats, str):
            formats = [formats]
        if formats is not None and (
            not isinstance(formats, list) or not all(isinstance(f, str) for f in formats)
        ):
            raise ApiError(400, "formats must be a format name or a list of them", param="formats")
        times = {}
        for name in ("modified_after", "modified_before"):
            value = field(doc, name, str, "an ISO 8601 date or date-time string")
            times[name] = None if value is None else parse_time(value, name)
        min_score = field(doc, "min_score", (int, float), "a number")
        mode = field(doc, "mode", str, "a string") or ("vector" if min_score is not None else "hybrid")
        rrf_k = field(doc, "rrf_k", (int, float), "a number")
        alpha = field(doc, "alpha", (int, float), "a number")
        return SearchOptions(
            k=k,
            mode=cast(Mode, mode),
            fusion=field(doc, "fusion", str, "a string") or FUSION,
            rrf_k=RRF_K if rrf_k is None else float(rrf_k),
            alpha=ALPHA if alpha is None else float(alpha),
            filters=Filters(
                prefix or None, tuple(formats or ()), times["modified_after"], times["modified_before"]
            ),
            group_by=field(doc, "group_by", str, "a string") or "chunk",
            min_score=None if min_score is None else float(min_score),
        )
    except UsageError as exc:
        message = str(exc)
        param = next((f for f in SEARCH_FIELDS if message.startswith(f)), None)
        raise ApiError(400, message, param=param or ("k" if message.startswith("k ") else None)) from None


def input_texts(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "input must be a string or a non-empty list of strings", param="input")
    if len(raw) > MAX_INPUTS:
        raise ApiError(400, f"input holds {len(raw)} items; at most {MAX_INPUTS} per request", param="input")
    if not all(isinstance(item, str) for item in raw):
        raise ApiError(
            400,
            "input must be strings: token-id arrays are not supported (embedd tokenizes itself; with "
            "LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False)",
            param="input",
            code="token_input_unsupported",
        )
    for i, text in enumerate(raw):
        if not text.strip():
            raise ApiError(400, f"input[{i}] is empty", param="input")
    return list(raw)
