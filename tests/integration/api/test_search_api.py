"""Search through the API: read-your-writes tokens, cost controls, what errors reveal."""

from __future__ import annotations

import time
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from api.search_adapter import REJECTED_DETAIL
from api.search_query import encode_token
from tests.fixtures.api import ApiHandle, open_api
from tests.fixtures.auth import AuthHandle
from tests.fixtures.pipeline import Pipeline

pytestmark = pytest.mark.integration

SEARCH = "/v1/collections/books/search"


async def _put(pipeline: Pipeline, doc_id: str, body: dict[str, Any]) -> str:
    r = await pipeline.api.client.put(
        f"/v1/collections/books/documents/{doc_id}", json=body, headers=pipeline.headers
    )
    assert r.status_code in (200, 201), r.text
    token: str = r.headers["outbox-token"]
    return token


async def test_200_writes_in_a_row_are_each_found_by_the_next_search_with_their_token(
    pipeline: Pipeline,
) -> None:
    """Read your writes: `after=<token>` answers only once the write is searchable."""
    await pipeline.start_stages()
    first = await _put(pipeline, "d0", {"text": "warm up"})
    r = await pipeline.api.client.get(SEARCH, params={"after": first, "wait_ms": 10_000})
    assert r.status_code == 200, r.text
    # Search sees a write after the index's next refresh (1 s by default, as on real
    # Elasticsearch); a shorter interval keeps 200 rounds quick without changing what is
    # tested: each search must wait for exactly its own write.
    await pipeline.es.indices.put_settings(
        index=pipeline.settings.es.alias_for("books"), settings={"refresh_interval": "100ms"}
    )
    misses = []
    waited_ms = []
    for i in range(200):
        word = f"zq{i:03d}x"
        token = await _put(pipeline, f"d{i % 20}", {"text": f"round {word}", "i": i})
        started = time.perf_counter()
        r = await pipeline.api.client.get(
            SEARCH, params={"q": word, "after": token, "wait_ms": 10_000}
        )
        waited_ms.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        if [(h["id"], h["document"]["i"]) for h in hits] != [(f"d{i % 20}", i)]:
            misses.append((i, hits))
    assert misses == []
    waited_ms.sort()
    print(f"after= wait: p50 {waited_ms[100]:.0f} ms, p99 {waited_ms[197]:.0f} ms")


async def test_a_deleted_documents_token_waits_until_search_no_longer_finds_it(
    pipeline: Pipeline,
) -> None:
    await pipeline.start_stages()
    await _put(pipeline, "gone", {"text": "vanishing"})
    r = await pipeline.api.client.delete(
        "/v1/collections/books/documents/gone", headers=pipeline.headers
    )
    token = r.headers["outbox-token"]
    found = await pipeline.api.client.get(
        SEARCH, params={"q": "vanishing", "after": token, "wait_ms": 10_000}
    )
    assert found.status_code == 200, found.text
    assert found.json()["hits"] == []


async def test_a_write_not_yet_searchable_is_a_503_not_yet_indexed_after_wait_ms(
    api_client: ApiHandle,
) -> None:
    """No relay or indexer runs here, so the write never becomes searchable."""
    r = await api_client.client.put(
        "/v1/collections/books/documents/x", json={}, headers=await api_client.writer_headers()
    )
    token = r.headers["outbox-token"]
    late = await api_client.client.get(SEARCH, params={"after": token, "wait_ms": 50})
    assert late.status_code == 503, late.text
    assert late.headers["content-type"] == "application/problem+json"
    assert late.json()["type"].endswith("/not-yet-indexed")
    assert late.json()["pending"] == 1
    assert int(late.headers["retry-after"]) >= 1


@pytest.mark.parametrize("token", ["nonsense", "v1.eyJjIjoiYm9va3MifQ.AAAA"])
async def test_a_token_that_is_not_ours_is_a_400(api_client: ApiHandle, token: str) -> None:
    r = await api_client.client.get(SEARCH, params={"after": token})
    assert r.status_code == 400, r.text


async def test_wait_ms_is_bounded(api_client: ApiHandle) -> None:
    assert (await api_client.client.get(SEARCH, params={"wait_ms": 10_001})).status_code == 422
    assert (await api_client.client.get(SEARCH, params={"wait_ms": -1})).status_code == 422


async def test_searches_from_one_address_are_rate_limited(auth_service: AuthHandle) -> None:
    base = auth_service.settings
    settings = base.model_copy(
        update={"api": base.api.model_copy(update={"search_rate_per_second": 1.0})}
    )
    async with open_api(settings, auth_service) as api:
        statuses = [(await api.client.get(SEARCH)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # a burst of twice the rate, then wait
        r = await api.client.get(SEARCH)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1


async def test_an_elasticsearch_refusal_names_no_index_or_field_to_the_caller(
    pipeline: Pipeline,
) -> None:
    await pipeline.start_stages()
    token = await _put(pipeline, "a", {"text": "hello", "n": 1})
    ready = await pipeline.api.client.get(SEARCH, params={"after": token, "wait_ms": 10_000})
    assert ready.status_code == 200
    # A `next` token with one sort value too many: Elasticsearch refuses the search.
    bad = encode_token("_version", [1, "a", "extra"])
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        r = await pipeline.api.client.get(SEARCH, params={"sort": "_version", "search_after": bad})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == REJECTED_DETAIL
    assert pipeline.settings.es.index_prefix not in r.text
    rejected = [e for e in logs if e["event"] == "search_rejected"]
    assert "search_after" in rejected[0]["reason"], "the reason is logged for operators"
