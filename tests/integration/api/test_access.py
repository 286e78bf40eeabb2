"""Who may do what: collection scopes, private reads, logout, login limits, operator input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fixtures.api import ApiHandle, open_api
from tests.fixtures.auth import AuthHandle

pytestmark = pytest.mark.integration


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _with_api(auth: AuthHandle, **api: Any) -> Any:
    settings = auth.settings
    return settings.model_copy(update={"api": settings.api.model_copy(update=api)})


@pytest.fixture
async def private_api(auth_service: AuthHandle) -> AsyncIterator[ApiHandle]:
    async with open_api(_with_api(auth_service, public_reads=False), auth_service) as api:
        yield api


async def test_a_writer_scoped_to_collections_writes_only_there(api_client: ApiHandle) -> None:
    token = await api_client.auth.token("writer", collections=("books", "authors"))
    for collection, status in [("books", 201), ("authors", 201), ("films", 403)]:
        r = await api_client.client.post(
            f"/v1/collections/{collection}/documents", json={}, headers=_bearer(token)
        )
        assert r.status_code == status, (collection, r.text)
    assert await api_client.db["films"].count_documents({}) == 0


async def test_reads_are_public_by_default(api_client: ApiHandle) -> None:
    headers = await api_client.writer_headers()
    await api_client.client.put("/v1/collections/books/documents/d", json={}, headers=headers)
    assert (await api_client.client.get("/v1/collections/books/documents/d")).status_code == 200
    assert (await api_client.client.get("/v1/collections/books/search")).status_code == 200


async def test_private_reads_need_a_token_whose_scope_covers_the_collection(
    private_api: ApiHandle,
) -> None:
    writer = await private_api.writer_headers()
    for collection in ["books", "films"]:
        r = await private_api.client.put(
            f"/v1/collections/{collection}/documents/d", json={}, headers=writer
        )
        assert r.status_code == 201
    reader = _bearer(await private_api.auth.token("reader", collections=("books",)))
    for path, anonymous, scoped in [
        ("/v1/collections/books/documents/d", 401, 200),
        ("/v1/collections/books/search", 401, 200),
        ("/v1/collections/films/documents/d", 401, 403),
        ("/v1/collections/films/search", 401, 403),
    ]:
        assert (await private_api.client.get(path)).status_code == anonymous, path
        assert (await private_api.client.get(path, headers=reader)).status_code == scoped, path
    unscoped = _bearer(await private_api.auth.token("reader"))
    r = await private_api.client.get("/v1/collections/films/documents/d", headers=unscoped)
    assert r.status_code == 200


async def test_operator_routes_need_an_admin_of_every_collection(api_client: ApiHandle) -> None:
    scoped = _bearer(await api_client.auth.token("admin", collections=("books",)))
    assert (await api_client.client.get("/v1/ops/dlq", headers=scoped)).status_code == 403
    admin = await api_client.auth_headers("admin")
    assert (await api_client.client.get("/v1/ops/dlq", headers=admin)).status_code == 200


async def test_logout_revokes_the_callers_token_at_once(api_client: ApiHandle) -> None:
    headers = await api_client.writer_headers()
    docs = "/v1/collections/books/documents"
    assert (await api_client.client.post(docs, json={}, headers=headers)).status_code == 201
    r = await api_client.client.post("/v1/auth/logout", headers=headers)
    assert r.status_code == 204, r.text
    after = await api_client.client.post(docs, json={}, headers=headers)
    assert after.status_code == 401
    assert (await api_client.client.post("/v1/auth/logout", headers=headers)).status_code == 401
    assert (await api_client.client.post("/v1/auth/logout")).status_code == 401


async def test_failed_logins_from_one_address_get_429_with_retry_after(
    auth_service: AuthHandle,
) -> None:
    settings = _with_api(auth_service, login_failures_per_minute=3)
    async with open_api(settings, auth_service) as api:
        name = await auth_service.create_user("writer", password="right-password")
        for i in range(3):
            r = await api.client.post(
                "/v1/auth/token", json={"username": f"nobody{i}", "password": "wrong-pass"}
            )
            assert r.status_code == 401
        r = await api.client.post(
            "/v1/auth/token", json={"username": name, "password": "right-password"}
        )
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["content-type"] == "application/problem+json"


async def test_failed_logins_for_one_username_get_429_from_any_address(
    api_client: ApiHandle,
) -> None:
    name = await api_client.auth.create_user("writer", password="right-password")
    free = api_client.settings.auth.login_free_failures
    statuses = []
    for _ in range(free + 1):
        r = await api_client.client.post(
            "/v1/auth/token", json={"username": name, "password": "wrong-password"}
        )
        statuses.append(r.status_code)
    assert statuses == [401] * free + [429]
    assert int(r.headers["retry-after"]) >= 1


async def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(
    auth_service: AuthHandle,
) -> None:
    """The test client connects from 127.0.0.1; trusted, it may name the real client."""
    settings = _with_api(
        auth_service, login_failures_per_minute=1, trusted_proxies=["127.0.0.1/32"]
    )
    async with open_api(settings, auth_service) as api:

        async def login(client_ip: str) -> int:
            r = await api.client.post(
                "/v1/auth/token",
                json={"username": "nobody-here", "password": "wrong-pass"},
                headers={"X-Forwarded-For": client_ip},
            )
            return r.status_code

        assert await login("198.51.100.1") == 401
        assert await login("198.51.100.1") == 429
        assert await login("198.51.100.2") == 401  # another client behind the proxy


@pytest.mark.parametrize("collection", ["users", "outbox", "idempotency_keys", "a$b", "Books"])
async def test_reconcile_over_http_refuses_reserved_or_invalid_collections(
    api_client: ApiHandle, collection: str
) -> None:
    r = await api_client.client.post(
        "/v1/ops/reconcile",
        json={"collection": collection},
        headers=await api_client.auth_headers("admin"),
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_an_operator_body_is_not_parsed_for_an_anonymous_caller(
    api_client: ApiHandle,
) -> None:
    """Malformed JSON from an anonymous client is a 401, not a 422 naming the schema."""
    r = await api_client.client.post(
        "/v1/ops/replay", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 401
