"""While MongoDB is down the auth service says so: health NOT_SERVING, calls UNAVAILABLE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from auth_grpc.accounts import roles_for
from auth_grpc.server import start_server
from auth_grpc.store import MongoUserStore
from infra.devstack import free_port, mongo_server, mongo_uri
from infra.settings import Settings
from protos.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.fixtures.auth import fast_hasher

pytestmark = pytest.mark.integration


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, within_s: float = 20
) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_health_and_calls_follow_mongodb_going_away_and_coming_back(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    mongo = mongo_server(port=port, data_dir=None, log_dir=tmp_path)
    await asyncio.to_thread(mongo.start)
    own = settings.model_copy(
        update={
            "mongo": settings.mongo.model_copy(
                update={"uri": SecretStr(mongo_uri(port)), "server_selection_timeout_ms": 300}
            )
        }
    )
    server = await start_server(own, port=0, hasher=fast_hasher(), health_interval_s=0.1)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            auth = auth_pb2_grpc.AuthServiceStub(channel)

            def status_is(expected: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
                    return bool(response.status == expected)

                return check

            await _eventually(status_is(health_pb2.HealthCheckResponse.SERVING), "SERVING")
            store = MongoUserStore(server.client, own.mongo)
            hashed = await fast_hasher().hash("password1")
            await store.create_user("alice", hashed, roles_for("reader"))

            await asyncio.to_thread(mongo.stop)
            await _eventually(status_is(health_pb2.HealthCheckResponse.NOT_SERVING), "outage")
            ready, detail = await server.readiness()
            assert not ready
            assert "unreachable" in detail
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await auth.Login(auth_pb2.LoginRequest(username="alice", password="password1"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

            await asyncio.to_thread(mongo.start)
            await _eventually(status_is(health_pb2.HealthCheckResponse.SERVING), "recovery")
            assert await server.readiness() == (True, "ok")
    finally:
        await server.stop(grace=0.5)
        await asyncio.to_thread(mongo.stop)
