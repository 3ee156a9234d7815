"""The HTTP API as an ASGI app: search, OpenAI-compatible embeddings, status and health.

Routes (the same on the Unix socket and on TCP):

- ``POST /v1/embeddings``: OpenAI's request and response shape. ``input`` is a string or a list
  of strings (token-id arrays are refused with 400: the daemon tokenizes itself); ``model`` is
  accepted and answered with the daemon's model; ``encoding_format`` "float" (the default) or
  "base64" (little-endian float32, what the official client asks for). No query prefix is
  added: a caller embeds documents or queries as it likes.
- ``POST /v1/search``: ``{"query", "k", "mode", "source_prefix", "formats", "modified_after",
  "modified_before", "group_by", "min_score", "fusion", "rrf_k", "alpha"}`` (see
  ``daemon.query.search``); the query gets ``[model] query_prefix`` for the vector side and is
  ranked exactly like ``embedd search`` does. Any query text is answered 200.
- ``GET /v1/status``: what ``embedd status --json`` prints, with the daemon's live state.
- ``GET /v1/models``: the one model, for clients that list models first.
- ``GET /v1/files``: each file's state, ``?state=indexed|pending|failed|skipped|unavailable``,
  ``prefix``, ``limit`` (default 100, at most 1000), ``offset``; answers ``{"files": [{"source",
  "state", "chunks", "indexed_at", "reason", "since"}], "total", "next_offset"}``.
- ``POST /v1/forget``: ``{"prefix"}``; drops the sources at or below it from the store and the
  sinks (``embedd forget``) and answers ``{"prefix", "removed": [...]}``. Only on the Unix
  socket, whose file mode says who may change the index; TCP answers 403.
- ``GET /healthz``: 200 once the startup reconcile is done, 503 before and while stopping.
- ``GET /v1/events``: the events feed, as Server-Sent Events or a JSON long poll (``serve/events.py``).
- ``GET /metrics``: Prometheus' text format (``service/metrics.py``).
- ``GET /``: the web page (``serve/web/``); it and its files need no token, its API calls do.

Every error is JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with
its status: 400 bad JSON or fields, 401 a missing or wrong token, 404, 405, 408 a body that
does not arrive, 413 a body over the limit, 422 a text longer than the model's context (never
truncated), 503 while starting or stopping. No request can harm the daemon or the store: the
handlers only read a store snapshot and queue work for the embedder thread.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from concurrent.futures import Future
from typing import Any, Literal, Protocol

import anyio
import numpy as np
import orjson
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.embed.embedder import FloatMatrix
from daemon.errors import BadTextError, EmbedError, SchedulerClosedError, TextTooLongError
from daemon.query.search import search_snapshot
from daemon.serve import events as feed
from daemon.serve.answers import ApiError, error_response, json_response, unavailable
from daemon.serve.requests import EmbeddingsRequest, ForgetRequest, SearchRequest, lenient_json
from daemon.serve.web import web_routes
from daemon.service.events import EventLog
from daemon.service.metrics import CONTENT_TYPE as METRICS_TYPE
from daemon.service.metrics import Metrics
from daemon.store.snapshot import Snapshot

log = structlog.get_logger("embedd")

Phase = Literal["starting", "ready", "stopping"]

# A request body must arrive within this by default; a client trickling it is cut off with 408.
BODY_TIMEOUT_S = 30.0
FILE_STATES = ("indexed", "pending", "failed", "skipped", "unavailable")
MAX_FILES_PAGE = 1000


class Backend(Protocol):
    """What the API needs from the daemon."""

    @property
    def phase(self) -> Phase: ...
    @property
    def model(self) -> str: ...
    @property
    def dimension(self) -> int: ...
    @property
    def query_prefix(self) -> str: ...

    def embed(self, texts: list[str]) -> Future[FloatMatrix]:
        """Queue texts at query priority; raises BadTextError (TextTooLongError past the context) or
        SchedulerClosedError; the future raises EmbedFailedError when the model fails."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def snapshot(self) -> Snapshot:
        """The store as last published by the worker; never blocks."""
        ...

    def status(self) -> dict[str, Any]:
        """The ``/v1/status`` document."""
        ...

    def forget(self, prefix: str) -> Future[list[str]]:
        """Queue forgetting the sources at or below ``prefix``; the future gives those removed."""
        ...

    def files(self, state: str | None, prefix: str | None, limit: int, offset: int) -> dict[str, Any]:
        """The ``/v1/files`` document: one page of files in their state."""
        ...


class Api:
    """The route handlers over one ``Backend``."""

    def __init__(
        self, backend: Backend, *, max_body_bytes: int, body_timeout_s: float = BODY_TIMEOUT_S
    ) -> None:
        self.backend = backend
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # The daemon's events feed and metrics (``DaemonBackend``); a backend without them (a
        # test's fake) gets empty ones of its own.
        self.event_log: EventLog = getattr(backend, "events", None) or EventLog()
        self.meters: Metrics = getattr(backend, "metrics", None) or Metrics()

    # -- plumbing -------------------------------------------------------------------------

    async def _json_body(self, request: Request, *, lenient: bool = False) -> dict[str, Any]:
        """The request's JSON object; 413 past the limit, 408 when it does not arrive, 400 when invalid."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        body = bytearray()
        try:
            with anyio.fail_after(self.body_timeout_s):
                async for piece in request.stream():
                    body += piece
                    if len(body) > self.max_body_bytes:
                        raise self._too_large()
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.body_timeout_s:g} s") from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            doc = lenient_json(body) if lenient else None
            if doc is None:
                raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "the body must be a JSON object")
        return doc

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than serve.max_body_bytes ({self.max_body_bytes} bytes)",
            code="body_too_large",
        )

    def _ready(self) -> None:
        phase = self.backend.phase
        if phase != "ready":
            raise unavailable(phase)

    async def _vectors(self, request: Request, texts: list[str], param: str) -> FloatMatrix:
        """Embed at query priority; a client that hangs up meanwhile cancels the job if it has not started."""
        try:
            future = await run_in_threadpool(self.backend.embed, texts)
            return await _wait_unless_disconnected(request, future)
        except (EmbedError, SchedulerClosedError) as exc:
            raise _refusal(exc, param, len(texts)) from None

    async def _query_vector(self, request: Request, text: str, notes: list[str]) -> FloatMatrix:
        """The query's vector; a query longer than the model's context is embedded by its start
        (the keyword side still reads all of it), with a note, never refused."""
        whole = len(text)
        for _ in range(8):
            try:
                future = await run_in_threadpool(self.backend.embed, [text])
            except TextTooLongError as exc:
                text = text[: max(1, min(len(text) - 1, int(len(text) * exc.limit / exc.tokens * 0.9)))]
                continue
            except (EmbedError, SchedulerClosedError) as exc:
                raise _refusal(exc, "query", 1) from None
            if len(text) < whole:
                notes.append(
                    f"the query is longer than the model's context: its first {len(text)} of {whole} "
                    "characters were embedded (the keyword side reads all of it)"
                )
            try:
                vectors = await _wait_unless_disconnected(request, future)
            except (EmbedError, SchedulerClosedError) as exc:
                raise _refusal(exc, "query", 1) from None
            vector: FloatMatrix = vectors[0]
            return vector
        raise ApiError(
            422, "the query does not fit the model's context", param="query", code="context_length_exceeded"
        )

    # -- routes ---------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        body = EmbeddingsRequest.parse(await self._json_body(request))
        texts = body.texts
        if body.dimensions is not None and body.dimensions != self.backend.dimension:
            raise ApiError(
                400,
                f"dimensions: this model makes {self.backend.dimension}-dimensional vectors only",
                param="dimensions",
            )
        self._ready()
        vectors = await self._vectors(request, texts, "input")
        tokens = await run_in_threadpool(lambda: sum(self.backend.count_tokens(t) for t in texts))
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vec, body.encoding_format)}
            for i, vec in enumerate(vectors)
        ]
        self.meters.embedded(len(texts), time.perf_counter() - started)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": self.backend.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def search(self, request: Request) -> Response:
        started = time.perf_counter()
        body = SearchRequest.parse(await self._json_body(request, lenient=True))
        query = body.text()
        opts = body.options()
        self._ready()
        vector = None
        notes: list[str] = []
        if opts.mode == "vector":
            # The vector is the whole answer: a query past the model's context is refused, as ever.
            vector = (await self._vectors(request, [self.backend.query_prefix + query], "query"))[0]
        elif opts.needs_vector:
            vector = await self._query_vector(request, self.backend.query_prefix + query, notes)
        snap = self.backend.snapshot()
        outcome = await run_in_threadpool(search_snapshot, snap, query, vector, opts)
        notes += outcome.notes
        self.meters.searched(opts.mode, time.perf_counter() - started)
        return json_response(
            {
                "query": query,
                "mode": opts.mode,
                "results": [h.to_json() for h in outcome.hits],
                "notes": notes,
                "model": snap.model,
                "store": str(snap.path),
                "searched": snap.count,
                "took_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )

    async def status(self, request: Request) -> Response:
        return json_response(await run_in_threadpool(self.backend.status))

    async def files(self, request: Request) -> Response:
        query = request.query_params
        state = query.get("state")
        if state is not None and state not in FILE_STATES:
            raise ApiError(400, f"state must be one of {', '.join(FILE_STATES)}", param="state")
        numbers = {}
        for name, default, low, high in (("limit", 100, 1, MAX_FILES_PAGE), ("offset", 0, 0, None)):
            raw = query.get(name, str(default))
            if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
                bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
                raise ApiError(400, f"{name} must be an integer {bounds}", param=name)
            numbers[name] = int(raw)
        doc = await run_in_threadpool(
            self.backend.files, state, query.get("prefix"), numbers["limit"], numbers["offset"]
        )
        return json_response(doc)

    async def forget(self, request: Request) -> Response:
        server = request.scope.get("server")
        if not (isinstance(server, tuple) and server[1] is None):
            raise ApiError(
                403,
                "forget is only answered on the Unix socket",
                type_="permission_error",
                code="socket_only",
            )
        prefix = ForgetRequest.parse(await self._json_body(request)).prefix
        self._ready()
        try:
            future = self.backend.forget(prefix)
        except SchedulerClosedError:
            raise unavailable("stopping") from None
        try:
            removed = await asyncio.wrap_future(future)
        except SchedulerClosedError:
            raise unavailable("stopping") from None
        return json_response({"prefix": prefix, "removed": removed})

    async def models(self, request: Request) -> Response:
        model = {"id": self.backend.model, "object": "model", "created": 0, "owned_by": "embedd"}
        return json_response({"object": "list", "data": [model]})

    async def events(self, request: Request) -> Response:
        def stopping() -> bool:
            return self.backend.phase == "stopping"

        try:
            if feed.wants_poll(request):
                return json_response(await feed.long_poll(request, self.event_log, stopping))
            since = feed.EventStream.since_of(request)
        except feed.BadQuery as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        stream = feed.EventStream(self.event_log, since, stopping)
        return _Raw(stream)

    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(self.meters.exposition)
        return Response(body, media_type=METRICS_TYPE)

    async def healthz(self, request: Request) -> Response:
        phase = self.backend.phase
        return json_response({"status": phase}, 200 if phase == "ready" else 503)


def _encode(vec: FloatMatrix, fmt: str) -> object:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
    return vec


async def _wait_unless_disconnected(request: Request, future: Future[FloatMatrix]) -> FloatMatrix:
    """The future's result; if the client hangs up first, cancel the job (if not started) and stop."""
    result: asyncio.Future[FloatMatrix] = asyncio.wrap_future(future)
    gone: asyncio.Future[None] = asyncio.ensure_future(_disconnected(request))
    waiting: list[asyncio.Future[Any]] = [result, gone]
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if result not in done:
        future.cancel()
        result.cancel()
        raise ClientDisconnect()
    return result.result()


def _refusal(exc: EmbedError | SchedulerClosedError, param: str, count: int) -> ApiError:
    """The answer to an embedding that failed, by the error's type: a text the model must not be
    given is the caller's (400, 422 past the context), a failing model the daemon's (500)."""
    if isinstance(exc, SchedulerClosedError):
        return unavailable("stopping")
    if isinstance(exc, TextTooLongError):
        where = param if exc.index is None or count == 1 else f"{param}[{exc.index}]"
        return ApiError(
            422,
            f"{where} has {exc.tokens} tokens, more than the model's context of {exc.limit}; "
            "embedd never truncates: split the text",
            param=param,
            code="context_length_exceeded",
        )
    if isinstance(exc, BadTextError):
        return ApiError(400, f"{param}: {exc}", param=param)
    return ApiError(500, f"the model failed: {exc}", type_="server_error")


async def _disconnected(request: Request) -> None:
    """Return once the client has hung up (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def build_app(
    backend: Backend,
    *,
    max_body_bytes: int,
    token: str | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> ASGIApp:
    """The ASGI app; with ``token``, every route but /healthz needs ``Authorization: Bearer <token>``.

    A request body must arrive within ``body_timeout_s`` (408 otherwise).
    """
    api = Api(backend, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    routes = [
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/v1/search", api.search, methods=["POST"]),
        Route("/v1/status", api.status, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/forget", api.forget, methods=["POST"]),
        Route("/v1/files", api.files, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/v1/events", api.events, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *web_routes(),
    ]

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {
            404: f"Invalid URL ({request.method} {request.url.path})",
            405: f"Method {request.method} not allowed for {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, headers=exc.headers))

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        # Nobody is listening any more; uvicorn drops whatever is sent.
        return Response(status_code=499)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(500, "internal error; see the daemon's log", type_="server_error"))

    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            ClientDisconnect: on_disconnect,
            Exception: on_crash,
        },
    )
    guarded: ASGIApp = _Guarded(app)
    if token is not None:
        guarded = _BearerToken(guarded, token)
    return guarded


class _Raw(Response):
    """A Response whose body an ASGI callable sends itself (the events stream)."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__()
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _open_path(path: str) -> bool:
    """Served without a token: health, and the web page's own files (its API calls carry the token)."""
    return path in ("/healthz", "/") or path.startswith("/web/")


class _Guarded:
    """Logs an unexpected exception once, as our event, instead of uvicorn's traceback on stderr."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            # Starlette has already answered 500 (on_crash) when it could.
            log.exception("api_internal_error", path=scope.get("path"), method=scope.get("method"))


class _BearerToken:
    """Refuse requests without the right ``Authorization: Bearer`` token (401), except /healthz and
    the web page's static files."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _open_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = rest.strip()
        if not hmac.compare_digest(given, self._token):
            message = "a valid token is required: send 'Authorization: Bearer <token>' (serve.token_file)"
            if not given:
                message = "missing token: send 'Authorization: Bearer <token>' (serve.token_file)"
            response = error_response(
                ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
