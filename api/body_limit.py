"""One request-body limit for every route, enforced at the ASGI layer.

It runs before routing, body parsing and authentication: a declared `Content-Length`
over the limit is answered 413 without reading a byte, and the bytes of a body without
one (chunked) are counted as the app reads them, so reading stops with a 413 one chunk
past the limit. FastAPI reads a Pydantic body model before it solves any dependency, so
without this an anonymous client could make the API buffer (and parse) any amount.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import ProblemError, problem_response

# No limit anyone configures has more digits; a longer Content-Length is over it.
_MAX_DIGITS = 18


class BodyTooLargeHTTPError(HTTPException):
    """Raised from `receive()` once the counted body passes the limit (FastAPI re-raises
    an `HTTPException` from body parsing as it is, so the client gets the 413)."""


class BodyLimitMiddleware:
    """413 for any request whose body is, or turns out to be, over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            problem = ProblemError(413, self._detail(), headers={"Connection": "close"})
            await problem_response(Request(scope), problem)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # No `Connection: close` here: the client is mid-upload, and closing with
                    # its bytes unread resets the connection before it reads the 413. The
                    # server discards the rest without buffering it.
                    raise BodyTooLargeHTTPError(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"


def _content_length(scope: Scope) -> int | None:
    """The declared length; a huge one counts as huge, a malformed one is left to the app."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                return None
            return int(text) if len(text) <= _MAX_DIGITS else 10**_MAX_DIGITS
    return None
