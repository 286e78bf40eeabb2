"""No body is read before it may be: one limit for every route, before parsing and auth.

Against `outbox api` in a child process (real uvicorn, real sockets), measuring the API
process's peak resident memory (VmHWM) around anonymous 128 MiB uploads.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.fixtures.api import ApiProcess, api_process
from tests.fixtures.auth import AuthHandle

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
UPLOAD = 128 * MIB
# Far below the upload: the API may read about one limit's worth (1 MiB) and no more.
MAX_GROWTH = 24 * MIB


async def _post(api: ApiProcess, path: str, *, chunked: bool) -> int:
    """Send a 128 MiB anonymous POST; return the status the API answers with.

    `Expect: 100-continue`, as curl sends it for large bodies: the body follows only when
    the server asks for it, and is read back concurrently with the response, so a refusal
    before or during the upload is seen as the status it is.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {UPLOAD}"
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\n{framing}\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=120)
    if int(status_line.split()[1]) != 100:
        writer.close()
        return int(status_line.split()[1])
    await reader.readline()  # the blank line after "100 Continue"

    async def send_body() -> None:
        chunk = b" " * MIB
        with contextlib.suppress(ConnectionError):
            for _ in range(UPLOAD // MIB):
                writer.write(f"{MIB:x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
                await writer.drain()
            writer.write(b"0\r\n\r\n" if chunked else b"")
            await writer.drain()

    sender = asyncio.create_task(send_body())
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout=300)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_anonymous_128_mib_post_is_refused_without_memory_growth(
    auth_service: AuthHandle, chunked: bool
) -> None:
    """A declared length over the limit is a 413 before anything else. A chunked body has
    no declared length: the operator routes answer 401 before reading any of it, the
    public login route reads it and stops with a 413 one chunk past the limit."""
    async with api_process(auth_service.settings) as api:
        before = api.peak_rss_bytes()
        for path in ["/v1/ops/replay", "/v1/ops/reconcile", "/v1/ops/dlq/redrive"]:
            status = await _post(api, path, chunked=chunked)
            assert status == (401 if chunked else 413), path
        assert await _post(api, "/v1/auth/token", chunked=chunked) == 413
        grown = api.peak_rss_bytes() - before
    print(f"peak RSS {before / MIB:.0f} MiB, grew by {grown / MIB:.1f} MiB")
    assert grown < MAX_GROWTH, f"peak RSS grew by {grown / MIB:.0f} MiB"


async def test_every_route_refuses_an_oversized_declared_body_before_anything_else(
    auth_service: AuthHandle,
) -> None:
    async with api_process(auth_service.settings) as api:
        for path in ["/v1/auth/token", "/v1/collections/books/documents", "/healthz"]:
            assert await _post(api, path, chunked=False) == 413, path
