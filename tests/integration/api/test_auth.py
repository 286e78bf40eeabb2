"""Tokens through the real gRPC auth service: login, write rights, revocation, outages."""

from __future__ import annotations

import asyncio
import time

import pytest

from infra.devstack import free_port
from infra.settings import Settings
from tests.fixtures.api import ApiHandle, open_api
from tests.fixtures.auth import AuthHandle

DOCS = "/v1/collections/books/documents"


def with_auth(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"auth": settings.auth.model_copy(update=changes)})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"},
    ],
    ids=["none", "empty-bearer", "basic", "garbage", "forged-jwt"],
)
async def test_writes_without_a_valid_token_are_401_with_a_bearer_challenge(
    api_client: ApiHandle, headers: dict[str, str]
) -> None:
    for method, url in [("POST", DOCS), ("PUT", f"{DOCS}/a"), ("PATCH", f"{DOCS}/a")]:
        r = await api_client.client.request(method, url, json={"v": 1}, headers=headers)
        assert r.status_code == 401, (method, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == "application/problem+json"
    r = await api_client.client.delete(f"{DOCS}/a", headers=headers)
    assert r.status_code == 401
    assert await api_client.outbox.count_documents({}) == 0


async def test_a_reader_cannot_write_but_can_read(api_client: ApiHandle) -> None:
    writer = await api_client.writer_headers()
    await api_client.client.put(f"{DOCS}/r1", json={"v": 1}, headers=writer)
    reader = await api_client.auth_headers("reader")

    r = await api_client.client.put(f"{DOCS}/r1", json={"v": 2}, headers=reader)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert (await api_client.client.delete(f"{DOCS}/r1", headers=reader)).status_code == 403
    assert (await api_client.client.get(f"{DOCS}/r1")).json()["version"] == 1
    assert await api_client.outbox.count_documents({}) == 1


async def test_an_admin_can_write(api_client: ApiHandle) -> None:
    admin = await api_client.auth_headers("admin")
    r = await api_client.client.put(f"{DOCS}/a1", json={"v": 1}, headers=admin)
    assert r.status_code == 201


async def test_token_endpoint_accepts_json_and_the_oauth2_form(api_client: ApiHandle) -> None:
    username = await api_client.auth.create_user("writer", password="s3cret-pass")
    c = api_client.client
    by_json = await c.post("/v1/auth/token", json={"username": username, "password": "s3cret-pass"})
    by_form = await c.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": username, "password": "s3cret-pass"},
    )
    for name, r in (("json", by_json), ("form", by_form)):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] > 0
        write = await c.put(
            f"{DOCS}/t-{name}",
            json={"v": 1},
            headers={"Authorization": f"Bearer {body['access_token']}"},
        )
        assert write.status_code == 201


@pytest.mark.parametrize(
    "body",
    [{"username": "nobody", "password": "x"}, {"username": "known", "password": "wrong"}],
)
async def test_bad_credentials_are_401(api_client: ApiHandle, body: dict[str, str]) -> None:
    known = await api_client.auth.create_user("writer", password="right-one")
    if body["username"] == "known":
        body = {**body, "username": known}
    r = await api_client.client.post("/v1/auth/token", json=body)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"username": "x"}}, 422),
        ({"json": [1]}, 422),
        ({"content": b"{oops"}, 400),
        ({"data": {"grant_type": "client_credentials", "username": "a", "password": "b"}}, 400),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ],
)
async def test_malformed_token_requests_are_4xx(
    api_client: ApiHandle, kwargs: dict[str, object], status: int
) -> None:
    r = await api_client.client.post("/v1/auth/token", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text


async def test_verification_is_cached_for_the_configured_ttl(auth_service: AuthHandle) -> None:
    """Within the cache TTL a revoked token still passes: the cache really answers."""
    settings = with_auth(auth_service.settings, verify_cache_seconds=300.0)
    async with open_api(settings, auth_service) as api:
        token = await auth_service.token("writer")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await api.client.put(f"{DOCS}/c1", json={"v": 1}, headers=headers)).is_success
        await auth_service.revoke(token)
        assert (await api.client.put(f"{DOCS}/c1", json={"v": 2}, headers=headers)).is_success


async def test_a_revoked_token_stops_working_after_the_cache_ttl(auth_service: AuthHandle) -> None:
    settings = with_auth(auth_service.settings, verify_cache_seconds=0.2)
    async with open_api(settings, auth_service) as api:
        token = await auth_service.token("writer")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await api.client.put(f"{DOCS}/v1", json={"v": 0}, headers=headers)).is_success
        await auth_service.revoke(token)
        revoked_at = time.monotonic()

        status = None
        while time.monotonic() - revoked_at < 10:
            status = (
                await api.client.put(f"{DOCS}/v1", json={"v": 1}, headers=headers)
            ).status_code
            if status == 401:
                break
            await asyncio.sleep(0.05)
        assert status == 401


async def test_an_unreachable_auth_service_is_a_quick_503_not_a_hang(
    auth_service: AuthHandle,
) -> None:
    settings = with_auth(auth_service.settings, target=f"127.0.0.1:{free_port()}")
    async with open_api(settings, auth_service) as api:
        r = await asyncio.wait_for(
            api.client.put(f"{DOCS}/d", json={"v": 1}, headers={"Authorization": "Bearer t"}),
            timeout=10,
        )
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        login = await api.client.post("/v1/auth/token", json={"username": "a", "password": "b"})
        assert login.status_code == 503
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"mongodb": "ok", "auth": "down: UNAVAILABLE"}
        assert (await api.client.get("/healthz")).status_code == 200
        assert await api.outbox.count_documents({}) == 0


async def test_readyz_is_200_when_mongodb_and_auth_answer(api_client: ApiHandle) -> None:
    r = await api_client.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"mongodb": "ok", "auth": "ok"}
