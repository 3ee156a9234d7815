"""No access from web pages: the ``Host`` and ``Origin`` checks in front of every route.

A web page the user visits can send requests to 127.0.0.1: with DNS rebinding
(``attacker.example`` resolving to 127.0.0.1 after the page loaded) it even reads the answers,
and a cross-site POST with ``Content-Type: text/plain`` needs no CORS preflight. So, before
the token check and before any route (``/healthz`` too):

- **Host.** On TCP a request is answered only when its ``Host`` names the listener: 127.0.0.1,
  localhost, [::1] or the address bound (on a wildcard bind, 0.0.0.0 or ::, any IP address),
  without a port or with the listener's own, or a name in ``serve.allowed_hosts``. Anything
  else (``attacker.example:PORT``, ``localhost.attacker.example``, userinfo, garbage) gets 421
  Misdirected Request. A TCP request without ``Host`` (only HTTP/1.0 can omit it; browsers
  always send one) is refused too. An IP literal cannot be rebound, so only names need listing.
- **Origin.** A request with an ``Origin`` is answered only when it is the listener's own
  (``http://127.0.0.1:PORT``, ``http://localhost:PORT``, ``http://[::1]:PORT``, a name of
  ``allowed_hosts``, over http or https) or listed in ``serve.allowed_origins``; anything else,
  ``Origin: null`` included, gets 403. Without an ``Origin``, ``Sec-Fetch-Site: cross-site`` or
  ``same-site`` (an ``<img>`` or ``<script>`` of another page) gets 403 too, except a top-level
  GET navigation (a link to the API followed by the user).
- **CORS** headers are sent only to a listed origin: its preflight (OPTIONS with
  ``Access-Control-Request-Method``) gets 204 with the allowed methods and headers, its
  answers ``Access-Control-Allow-Origin``. Any other preflight gets 403 without CORS headers.

On the Unix socket (no browser reaches it) no ``Host`` is required, and an ``Origin`` is
accepted when it names the ``Host`` the request was sent to (a proxy's own page) or is listed.

Each refused host or origin is logged once per listener, as a warning (a page could send
thousands of requests; the log gets one line each, up to ``MAX_LOGGED`` distinct values).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.serve.answers import ApiError, error_response
from daemon.webnames import is_ip_literal, split_authority

log = structlog.get_logger("embedd")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_LOGGED = 256  # distinct refused values logged per listener; then one line saying so
PREFLIGHT_MAX_AGE_S = 600
ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = "Authorization, Content-Type"
_READ = frozenset(
    (b"host", b"origin", b"sec-fetch-site", b"sec-fetch-mode", b"access-control-request-method")
)


@dataclass(frozen=True)
class Policy:
    """What one listener accepts; built by ``tcp_policy`` or ``socket_policy``."""

    where: str  # the listener, for log lines
    hosts: frozenset[str] | None  # accepted Host values; None: no Host requirement (the socket)
    origin_authorities: frozenset[str]  # host:port of the listener's own origins
    allowed_origins: frozenset[str]  # serve.allowed_origins: the only ones that get CORS headers
    port: int | None = None
    any_ip: bool = False  # bound to 0.0.0.0 or ::, so every IP address of the machine is its own

    def host_ok(self, host: str) -> bool:
        """Tell whether ``host`` (lowercased) names this listener."""
        if self.hosts is None or host in self.hosts:
            return True
        return self.any_ip and _ip_authority(host, self.port, port_required=False)

    def own_origin(self, origin: str, host: str | None) -> bool:
        """Tell whether ``origin`` (lowercased) is a page of this listener's own."""
        scheme, sep, authority = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not authority:
            return False
        if self.hosts is None:  # the socket: the page came through whatever name the request names
            return host is not None and authority == host
        if authority in self.origin_authorities:
            return True
        return self.any_ip and _ip_authority(authority, self.port, port_required=True)


def tcp_policy(
    bound: str, port: int, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
) -> Policy:
    """The policy of a TCP listener bound to ``bound`` on ``port`` (the real one, after binding)."""
    literal = f"[{bound}]" if ":" in bound else bound
    names = {*LOOPBACK_NAMES, literal}
    hosts = names | {f"{n}:{port}" for n in names}
    authorities = {f"{n}:{port}" for n in names}
    for entry in allowed_hosts:
        # "name" also takes name:PORT; "name:port" only itself. A proxy's page (https://name) is own.
        listed = {entry} if _has_port(entry) else {entry, f"{entry}:{port}"}
        hosts |= listed
        authorities |= listed
    return Policy(
        where=f"{literal}:{port}",
        hosts=frozenset(hosts),
        origin_authorities=frozenset(authorities),
        allowed_origins=frozenset(allowed_origins),
        port=port,
        any_ip=ipaddress.ip_address(bound).is_unspecified,
    )


def socket_policy(where: str, *, allowed_origins: Iterable[str] = ()) -> Policy:
    """The policy of the Unix socket: no Host requirement, the Origin rule only."""
    return Policy(
        where=where, hosts=None, origin_authorities=frozenset(), allowed_origins=frozenset(allowed_origins)
    )


def _has_port(authority: str) -> bool:
    return ":" in authority.rpartition("]")[2]


def _ip_authority(authority: str, port: int | None, *, port_required: bool) -> bool:
    """Tell whether ``authority`` is an IP literal (``10.0.0.2``, ``[::1]``) with ``port`` (or none)."""
    try:
        host, given = split_authority(authority)
    except ValueError:
        return False
    return is_ip_literal(host) and (given == port or (given is None and not port_required))


class WebGuard:
    """The ASGI middleware enforcing a ``Policy``; wrap it around the whole app of one listener."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy
        self._logged: set[tuple[str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[str]] = {}
        for name, value in scope.get("headers", ()):
            if name in _READ:
                headers.setdefault(name, []).append(value.decode("latin-1").strip().lower())
        policy = self.policy
        hosts = headers.get(b"host", [])
        host = hosts[0] if len(hosts) == 1 else None
        if policy.hosts is not None and (host is None or not policy.host_ok(host)):
            await self._refusal(421, "host", host)(scope, receive, send)
            return
        method = scope.get("method", "GET")
        origins = headers.get(b"origin")
        preflight = method == "OPTIONS" and b"access-control-request-method" in headers
        if origins is not None:
            origin = origins[0] if len(origins) == 1 else "(several Origin headers)"
            if origin in policy.allowed_origins and len(origins) == 1:
                if preflight:
                    await _preflight(scope, receive, send, origin)
                else:
                    await self.app(scope, receive, _with_cors(send, origin))
                return
            if len(origins) != 1 or not policy.own_origin(origin, host):
                await self._refusal(403, "origin", origin)(scope, receive, send)
                return
        elif preflight or _cross_site(headers, method):
            site = (headers.get(b"sec-fetch-site") or ["(none)"])[0]
            await self._refusal(403, "sec-fetch-site", site)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, status: int, what: str, value: str | None) -> Response:
        shown = "(none)" if value is None else value[:200]
        self._log_once(what, shown)
        if what == "host":
            message = (
                f"refused: the Host {shown} does not name this server ({self.policy.where}); a web page "
                "using DNS rebinding sends such requests. Add the name to serve.allowed_hosts if you use it"
            )
            code = "host_not_allowed"
        elif what == "origin":
            message = (
                f"refused: requests from web pages are not answered (Origin {shown}); list the page's "
                "origin in serve.allowed_origins to let it in"
            )
            code = "origin_not_allowed"
        else:
            message = f"refused: a request from another site (Sec-Fetch-Site {shown}) without an Origin"
            code = "origin_not_allowed"
        return error_response(ApiError(status, message, code=code))

    def _log_once(self, what: str, value: str) -> None:
        key = (what, value)
        if key in self._logged or len(self._logged) > MAX_LOGGED:
            return
        self._logged.add(key)
        if len(self._logged) > MAX_LOGGED:
            log.warning("api_refusals_not_logged", listener=self.policy.where, after=MAX_LOGGED)
            return
        hint = {
            "host": "a web page trying DNS rebinding? if you use this name, add it to serve.allowed_hosts",
            "origin": "a web page asked; if you trust it, add its origin to serve.allowed_origins",
        }.get(what, "a web page of another site asked")
        log.warning(
            f"api_{what.replace('-', '_')}_refused", value=value, listener=self.policy.where, hint=hint
        )


def _cross_site(headers: dict[bytes, list[str]], method: str) -> bool:
    """A browser's request from another site without an Origin (an image, a script), not a navigation."""
    site = headers.get(b"sec-fetch-site", [""])[0]
    if site not in ("cross-site", "same-site"):
        return False
    navigate = headers.get(b"sec-fetch-mode", [""])[0] == "navigate"
    return not (navigate and method in ("GET", "HEAD"))


async def _preflight(scope: Scope, receive: Receive, send: Send, origin: str) -> None:
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
        (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    for name, value in scope.get("headers", ()):
        # Chrome's Private Network Access: a public page asking for a loopback server.
        if name == b"access-control-request-private-network" and value.strip().lower() == b"true":
            headers.append((b"access-control-allow-private-network", b"true"))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: str) -> Send:
    """``send`` adding ``Access-Control-Allow-Origin`` for a listed ``origin`` to the response."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending
