"""The web page at ``/``: plain HTML, CSS and one script, shipped as package data, no build step.

The page is static (it holds no data, so ``/`` and ``/web/*`` are served without the token);
everything it shows it fetches from the API on its own origin, with the token the user typed
when TCP needs one. A strict Content-Security-Policy allows nothing but this origin: no inline
script, no external asset, so it works offline and injected text cannot run.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


async def _page(request: Request) -> Response:
    name, media = _FILES[request.url.path]
    return Response(
        _read(name),
        media_type=media,
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def web_routes() -> list[Route]:
    """The page's routes, beside the API's."""
    return [Route(path, _page, methods=["GET"]) for path in _FILES]
