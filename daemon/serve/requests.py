"""The API's request bodies as pydantic models: each field's type once, in one place, and a 400
in OpenAI's shape naming the field for anything else (``daemon.serve.answers``).

Types are strict, as the daemon always read JSON: ``true`` is no number and ``1`` is no string.
What a value means (a known mode, a date, k's range) is checked where it is used
(``daemon.query.options``); its ``UsageError`` becomes a 400 naming the field as well.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal, Self, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from daemon.errors import UsageError
from daemon.query.options import ALPHA, FUSION, RRF_K, Filters, Fusion, Mode, SearchOptions, parse_time
from daemon.serve.answers import ApiError

# OpenAI's own limit of inputs per embeddings request.
MAX_INPUTS = 2048
# The error type of a rule whose own message is the answer (it names the field itself).
_SAID = "embedd_refused"


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


def _refused(message: str, **ctx: str) -> PydanticCustomError:
    return PydanticCustomError(_SAID, message.replace("{", "{{").replace("}", "}}"), ctx or None)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Body(BaseModel):
    """A request body; ``parse`` answers 400 for one that does not fit."""

    model_config = ConfigDict(strict=True, frozen=True)

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Self:
        """``doc`` as this model; ApiError 400 naming the first field that does not fit."""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise cls._refusal(exc, doc) from None

    @classmethod
    def _refusal(cls, exc: ValidationError, doc: dict[str, Any]) -> ApiError:
        errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            return ApiError(400, f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
        first = errors[0]
        name = str(first["loc"][0])
        if first["type"] == _SAID:
            return ApiError(400, first["msg"], param=name, code=(first.get("ctx") or {}).get("code"))
        what = cls.model_fields[name].description
        if first["type"] == "missing":
            return ApiError(400, f"missing required field: {name} ({what})", param=name)
        return ApiError(400, f"{name} must be {what}, not {_shown(doc.get(name))}", param=name)


class SearchRequest(Body):
    """``POST /v1/search`` (see ``daemon.query.search``). An unknown field is refused: a misspelt
    option must not be ignored (the web page also learns from it which options a daemon takes)."""

    model_config = ConfigDict(extra="forbid")
    _ANY_STRING: ClassVar[str] = "a string"

    query: str = Field(description=_ANY_STRING)
    k: int = Field(5, description="an integer")
    mode: str | None = Field(None, description=_ANY_STRING)
    source_prefix: str | None = Field(None, description=_ANY_STRING)
    formats: str | list[str] | None = Field(None, description="a format name or a list of them")
    modified_after: str | None = Field(None, description="an ISO 8601 date or date-time string")
    modified_before: str | None = Field(None, description="an ISO 8601 date or date-time string")
    group_by: str | None = Field(None, description=_ANY_STRING)
    min_score: float | None = Field(None, description="a number")
    fusion: str | None = Field(None, description=_ANY_STRING)
    rrf_k: float | None = Field(None, description="a number")
    alpha: float | None = Field(None, description="a number")

    def text(self) -> str:
        """The query text, cleaned; 400 when nothing is left of it."""
        query = clean(self.query)
        if not query.strip():
            raise ApiError(400, "query is empty", param="query")
        return query

    def options(self) -> SearchOptions:
        """The search's options; 400 naming the field for a value the search cannot take."""
        formats = [self.formats] if isinstance(self.formats, str) else self.formats
        try:
            after, before = (
                None if value is None else parse_time(value, name)
                for name, value in (
                    ("modified_after", self.modified_after),
                    ("modified_before", self.modified_before),
                )
            )
            return SearchOptions(
                k=self.k,
                mode=cast(Mode, self.mode or ("vector" if self.min_score is not None else "hybrid")),
                fusion=cast(Fusion, self.fusion or FUSION),
                rrf_k=RRF_K if self.rrf_k is None else self.rrf_k,
                alpha=ALPHA if self.alpha is None else self.alpha,
                filters=Filters(self.source_prefix or None, tuple(formats or ()), after, before),
                group_by=self.group_by or "chunk",
                min_score=self.min_score,
            )
        except UsageError as exc:
            message = str(exc)
            named = message.split(" ", 1)[0]  # the rules' messages start with the field's name
            raise ApiError(400, message, param=named if named in type(self).model_fields else None) from None


class EmbeddingsRequest(Body):
    """``POST /v1/embeddings``, OpenAI's shape. Other fields are ignored, not refused: OpenAI's
    clients send some of their own (``user``) that mean nothing here."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="a string or a non-empty list of strings")
    model: str | None = Field(None, description="a string")
    encoding_format: Literal["float", "base64"] = Field("float", description="'float' or 'base64'")
    dimensions: float | None = Field(None, description="the model's dimension")

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, raw: object) -> object:
        if not isinstance(raw, list):
            return raw  # a string, or not text at all (the type says so)
        if not raw:
            raise ValueError("an empty list")
        if len(raw) > MAX_INPUTS:
            raise _refused(f"input holds {len(raw)} items; at most {MAX_INPUTS} per request")
        if not all(isinstance(item, str) for item in raw):
            raise _refused(
                "input must be strings: token-id arrays are not supported (embedd tokenizes itself; "
                "with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False)",
                code="token_input_unsupported",
            )
        for i, text in enumerate(raw):
            if not text.strip():
                raise _refused(f"input[{i}] is empty")
        return raw

    @property
    def texts(self) -> list[str]:
        """The input as a list of texts."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


def _not_blank(prefix: str) -> str:
    if not prefix.strip("/ "):
        raise ValueError("blank")
    return prefix


class ForgetRequest(Body):
    """``POST /v1/forget``. An unknown field is refused: an option this daemon does not know (a
    dry run, say) must not be ignored by the one request that deletes."""

    model_config = ConfigDict(extra="forbid")

    prefix: Annotated[str, AfterValidator(_not_blank)] = Field(description="a non-empty string")
