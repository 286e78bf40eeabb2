"""A write whose commit answer is lost is looked up by its event id (delivery review D4).

The API talks to MongoDB through a proxy that loses commitTransaction replies (the server
committed) or the commits themselves (it did not): the first must answer 2xx with the
write, the second a distinct `outcome-unknown` problem that promises nothing about retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from infra.settings import Settings
from tests.fixtures.api import ApiHandle, open_api
from tests.fixtures.auth import AuthHandle
from tests.integration.api.mongo_proxy import MongoProxy, mongo_proxy

pytestmark = pytest.mark.integration

DOCS = "/v1/collections/books/documents"


@pytest.fixture
async def proxied(auth_service: AuthHandle) -> AsyncIterator[tuple[ApiHandle, MongoProxy]]:
    real = urlparse(auth_service.settings.mongo.uri.get_secret_value())
    assert real.hostname is not None
    assert real.port is not None
    async with mongo_proxy(real.hostname, real.port) as proxy:
        base = auth_service.settings
        settings: Settings = base.model_copy(
            update={
                "mongo": base.mongo.model_copy(update={"uri": SecretStr(proxy.uri())}),
                "api": base.api.model_copy(update={"write_timeout_s": 3.0}),
            }
        )
        async with open_api(settings, auth_service) as api:
            yield api, proxy


async def _outbox_count(api: ApiHandle, auth: AuthHandle) -> int:
    direct: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        auth.settings.mongo.uri.get_secret_value()
    )
    try:
        outbox = direct[api.settings.mongo.database][api.settings.mongo.outbox_collection]
        return await outbox.count_documents({})
    finally:
        await direct.close()


async def test_a_commit_whose_answer_is_lost_is_found_and_answered_201(
    proxied: tuple[ApiHandle, MongoProxy], auth_service: AuthHandle
) -> None:
    api, proxy = proxied
    headers = await api.writer_headers()
    proxy.mode = "cut_after_commit"
    r = await api.client.post(DOCS, json={"id": "dune", "title": "Dune"}, headers=headers)
    proxy.mode = "pass"
    assert proxy.commits_seen >= 1
    assert r.status_code == 201, r.text
    assert r.json()["document"] == {"title": "Dune"}
    assert await _outbox_count(api, auth_service) == 1
    # Not a second document on a retry: the client got its answer.
    again = await api.client.get(f"{DOCS}/dune")
    assert again.json()["version"] == 1


async def test_a_commit_that_never_happened_is_outcome_unknown_not_retry_safe(
    proxied: tuple[ApiHandle, MongoProxy], auth_service: AuthHandle
) -> None:
    api, proxy = proxied
    headers = await api.writer_headers()
    proxy.mode = "drop_commit"
    r = await api.client.post(DOCS, json={"title": "Dune"}, headers=headers)
    proxy.mode = "pass"
    assert proxy.commits_seen >= 1
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"].endswith("/outcome-unknown")
    assert problem["event_id"]
    assert "Retry-After" not in r.headers
    assert await _outbox_count(api, auth_service) == 0
