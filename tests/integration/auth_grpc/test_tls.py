"""TLS for the auth service (and mutual TLS), the API's client of it, and the API's HTTPS.

Certificates come from a throwaway CA made in the test (trustme). The server names are
`localhost`, as a cluster's would be `auth` or `auth.outbox.svc`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from api.auth_client import GrpcAuthClient, auth_channel
from api.main import serve
from api.problems import ProblemError
from auth_grpc.accounts import roles_for
from auth_grpc.server import AuthServer, start_server
from auth_grpc.store import MongoUserStore
from infra.devstack import free_port
from infra.errors import ServerUnreachableError
from infra.settings import AuthSettings, Settings
from tests.fixtures.auth import fast_hasher


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for localhost, a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    client = client_ca.issue_cert("outbox-api")

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return Pki(
        ca=write("ca.pem", server_ca.cert_pem.bytes()),
        server_cert=write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems)),
        server_key=write("server.key", server.private_key_pem.bytes()),
        client_ca=write("client-ca.pem", client_ca.cert_pem.bytes()),
        client_cert=write("client.pem", b"".join(b.bytes() for b in client.cert_chain_pems)),
        client_key=write("client.key", client.private_key_pem.bytes()),
    )


def with_auth(settings: Settings, **auth: object) -> Settings:
    return settings.model_copy(update={"auth": settings.auth.model_copy(update=auth)})


@asynccontextmanager
async def running_auth(settings: Settings) -> AsyncIterator[AuthServer]:
    server = await start_server(settings, port=0, hasher=fast_hasher())
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


async def create_user(server: AuthServer, settings: Settings, password: str) -> str:
    username = f"u-{uuid.uuid4().hex[:12]}"
    hashed = await fast_hasher().hash(password)
    await MongoUserStore(server.client, settings.mongo).create_user(
        username, hashed, roles_for("writer")
    )
    return username


def client_settings(port: int, **tls: object) -> AuthSettings:
    return AuthSettings(target=f"localhost:{port}", verify_cache_seconds=0, **tls)  # type: ignore[arg-type]


async def test_the_api_client_logs_in_and_verifies_over_tls(settings: Settings, pki: Pki) -> None:
    """Login and Verify cross TLS; the client checks the server against the configured CA."""
    tls = with_auth(settings, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    async with running_auth(tls) as server:
        username = await create_user(server, tls, "correct-horse")
        config = client_settings(server.port, tls_ca=str(pki.ca))
        channel = auth_channel(config)
        try:
            client = GrpcAuthClient(channel, config)
            token = await client.login(username, "correct-horse")
            principal = await client.verify(token.access_token)
            assert principal.username == username
            assert principal.can_write
            with pytest.raises(ProblemError) as refused:
                await client.login(username, "wrong-password")
            assert refused.value.status == 401
        finally:
            await channel.close(grace=None)


async def test_a_plaintext_or_untrusting_client_gets_nothing_from_a_tls_server(
    settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    tls = with_auth(settings, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(trustme.CA().cert_pem.bytes())
    async with running_auth(tls) as server:
        for config in (
            client_settings(server.port),  # plaintext
            client_settings(server.port, tls_ca=str(other_ca)),  # a CA that did not sign it
        ):
            channel = auth_channel(config)
            try:
                with pytest.raises(ServerUnreachableError):
                    await GrpcAuthClient(channel, config).login("nobody", "whatever-pw")
            finally:
                await channel.close(grace=None)


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    settings: Settings, pki: Pki
) -> None:
    mtls = with_auth(
        settings,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.client_ca),
    )
    async with running_auth(mtls) as server:
        username = await create_user(server, mtls, "correct-horse")
        anonymous = client_settings(server.port, tls_ca=str(pki.ca))
        channel = auth_channel(anonymous)
        try:
            with pytest.raises(ServerUnreachableError):
                await GrpcAuthClient(channel, anonymous).login(username, "correct-horse")
        finally:
            await channel.close(grace=None)
        identified = client_settings(
            server.port,
            tls_ca=str(pki.ca),
            tls_client_cert=str(pki.client_cert),
            tls_client_key=str(pki.client_key),
        )
        channel = auth_channel(identified)
        try:
            token = await GrpcAuthClient(channel, identified).login(username, "correct-horse")
            assert token.access_token
        finally:
            await channel.close(grace=None)


async def _reflected_services(port: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return [s.name for s in response.list_services_response.service]
    return []


async def test_reflection_is_off_in_production_unless_enabled(settings: Settings) -> None:
    async with running_auth(settings) as server:
        assert "auth.v1.AuthService" in await _reflected_services(server.port)
    prod = with_auth(settings.model_copy(update={"env": "prod"}), token_secret=SecretStr("p" * 32))
    async with running_auth(prod) as server:
        with pytest.raises(grpc.aio.AioRpcError) as off:
            await _reflected_services(server.port)
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with running_auth(with_auth(prod, reflection=True)) as server:
        assert "auth.v1.AuthService" in await _reflected_services(server.port)


async def test_the_api_serves_https_and_reaches_auth_over_mutual_tls(
    settings: Settings, pki: Pki
) -> None:
    """The whole path: HTTPS to the API, the API's mutual-TLS channel to auth (readiness
    pings it, a login goes through it)."""
    mtls = with_auth(
        settings,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.client_ca),
    )
    async with running_auth(mtls) as server:
        username = await create_user(server, mtls, "correct-horse")
        port = free_port()
        api_settings = settings.model_copy(
            update={
                "auth": settings.auth.model_copy(
                    update={
                        "target": f"localhost:{server.port}",
                        "tls_ca": str(pki.ca),
                        "tls_client_cert": str(pki.client_cert),
                        "tls_client_key": str(pki.client_key),
                    }
                ),
                "api": settings.api.model_copy(
                    update={
                        "port": port,
                        "tls_cert": str(pki.server_cert),
                        "tls_key": str(pki.server_key),
                    }
                ),
            }
        )
        task = asyncio.create_task(serve(api_settings))
        trust = ssl.create_default_context(cafile=str(pki.ca))
        try:
            async with httpx.AsyncClient(
                base_url=f"https://localhost:{port}", verify=trust, timeout=5
            ) as client:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        ready = await client.get("/readyz")
                        break
                    except httpx.TransportError:
                        assert not task.done(), "serve() exited before answering"
                        assert time.monotonic() < deadline, "the API never answered"
                        await asyncio.sleep(0.05)
                assert ready.status_code == 200, ready.text
                token = await client.post(
                    "/v1/auth/token", json={"username": username, "password": "correct-horse"}
                )
                assert token.status_code == 200, token.text
            async with httpx.AsyncClient(base_url=f"http://localhost:{port}", timeout=5) as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.get("/healthz")
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=15)
