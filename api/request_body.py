"""Reading request bodies under a byte limit that chunked uploads cannot bypass."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from api.problems import ProblemError
from api.validation import check_body_size, parse_json_object

JSON_MEDIA_TYPES = frozenset({"application/json"})


async def read_limited_body(request: Request, max_bytes: int) -> bytes:
    """The body; `BodyTooLargeError` once Content-Length or the bytes read pass the limit."""
    declared = (request.headers.get("content-length") or "").strip()
    if declared.isdigit():
        # A length of thousands of digits would make int() raise: it is too large anyway.
        check_body_size(int(declared) if len(declared) <= 18 else max_bytes + 1, max_bytes)
    chunks: list[bytes] = []
    size = 0
    # Count what actually arrives: Content-Length may be absent (chunked) or a lie.
    async for chunk in request.stream():
        size += len(chunk)
        check_body_size(size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def check_media_type(request: Request, allowed: frozenset[str]) -> None:
    """415 unless the Content-Type is one of `allowed`; an absent one is taken as JSON."""
    header = request.headers.get("content-type")
    if header is None:
        return
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type in allowed:
        return
    raise ProblemError(
        415,
        f"Content-Type {media_type!r} is not supported; use {' or '.join(sorted(allowed))}",
    )


async def read_json_object(
    request: Request,
    *,
    max_bytes: int,
    max_depth: int,
    media_types: frozenset[str],
    max_key_chars: int | None = None,
) -> dict[str, Any]:
    """A checked JSON object body (see `api.validation.parse_json_object`)."""
    check_media_type(request, media_types)
    raw = await read_limited_body(request, max_bytes)
    return parse_json_object(raw, max_depth=max_depth, max_key_chars=max_key_chars)
