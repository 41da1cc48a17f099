"""The live status page (``GET /status``): plain HTML and one vanilla JS file from the package.

No build step and nothing from a CDN: the page works offline. It polls ``GET /pools/status``
and ``GET /admin/status`` (with the admin key the operator typed, kept in sessionStorage).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response

ASSETS = {"index.html": "text/html; charset=utf-8",
          "status.js": "text/javascript; charset=utf-8",
          "status.css": "text/css; charset=utf-8"}
HEADERS = {
    "Cache-Control": "no-cache",
    # Everything comes from this origin: no CDN, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}


def status_page_router() -> APIRouter:
    """``GET /status`` and its two assets (not in /openapi.json, like /docs)."""
    folder = files(__name__)
    assets = {name: folder.joinpath(name).read_bytes() for name in ASSETS}
    router = APIRouter(include_in_schema=False)

    def asset(name: str) -> Response:
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)

    @router.get("/status")
    async def page() -> Response:
        return asset("index.html")

    @router.get("/status/status.js")
    async def script() -> Response:
        return asset("status.js")

    @router.get("/status/status.css")
    async def style() -> Response:
        return asset("status.css")

    return router
