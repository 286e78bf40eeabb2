"""`GET /status`: the status page for admins, a static shell with no data of its own.

The page (api/static/) logs in through `POST /v1/auth/token` and polls the admin-only
JSON operations `GET /v1/ops/status` (the report `outbox status --json` prints) and
`GET /v1/ops/freshness`, keeping the token in the page's memory. It needs no build step
and loads nothing from elsewhere: a strict Content-Security-Policy allows only this
origin's script, style and `fetch`.

These routes are left out of the OpenAPI document on purpose: they are a page for people,
not operations for API clients, and they serve the same three static files to anyone;
every number the page shows comes from documented operations, which the schemathesis
test covers. Their own behaviour is tested in tests/integration/api/test_status_page.py.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Response

router = APIRouter(include_in_schema=False)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_FILES = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("api") / "static" / name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_read(name), media_type=_FILES[name], headers=_HEADERS)


@router.get("/status")
async def status_page() -> Response:
    """The status page (HTML)."""
    return _serve("status.html")


@router.get("/status/status.js")
async def status_script() -> Response:
    return _serve("status.js")


@router.get("/status/status.css")
async def status_style() -> Response:
    return _serve("status.css")
