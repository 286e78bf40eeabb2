"""`serve(settings)`: uvicorn on a real port, stopped cleanly by cancelling the task."""

from __future__ import annotations

import asyncio
import time

import httpx

from api.main import serve
from infra.devstack import free_port
from tests.fixtures.auth import AuthHandle


async def test_serve_answers_on_its_port_and_stops_on_cancel(auth_service: AuthHandle) -> None:
    port = free_port()
    settings = auth_service.settings.model_copy(
        update={"api": auth_service.settings.api.model_copy(update={"port": port})}
    )
    task = asyncio.create_task(serve(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            deadline = time.monotonic() + 15
            while True:
                try:
                    r = await client.get("/readyz")
                    break
                except httpx.TransportError:
                    assert not task.done(), "serve() exited before answering"
                    assert time.monotonic() < deadline, "the API never answered"
                    await asyncio.sleep(0.05)
            assert r.status_code == 200
            assert r.headers["traceparent"].startswith("00-")
            assert (await client.get("/docs")).status_code == 200
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=15)
    assert done, "serve() did not stop after cancel"
    assert task.cancelled()
    async with httpx.AsyncClient(base_url=url, timeout=1) as client:
        try:
            await client.get("/healthz")
            raise AssertionError("the port still answers after serve() stopped")
        except httpx.TransportError:
            pass
