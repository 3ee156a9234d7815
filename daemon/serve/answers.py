"""The API's answers: JSON written by orjson, and every error in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def json_response(doc: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """JSON by orjson: numpy float32 arrays are written exactly, in their shortest form."""
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(err: ApiError) -> Response:
    """``err`` as ``{"error": {"message", "type", "param", "code"}}`` with its status."""
    body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return json_response(body, err.status, err.headers)


def unavailable(phase: str) -> ApiError:
    """503 while the daemon is starting or stopping, with Retry-After."""
    return ApiError(
        503,
        f"the daemon is {phase}; retry in a moment",
        type_="server_error",
        code=phase,
        headers={"Retry-After": "1"},
    )
