"""Search over what the indexer wrote: the searcher against Elasticsearch, and the route."""

from __future__ import annotations

from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from api.search_adapter import ElasticsearchSearcher
from api.search_query import SearchParamError, SearchParams
from infra.envelope import EventType
from infra.settings import Settings
from tests.fixtures.api import ApiHandle
from tests.fixtures.indexer import (
    KafkaWriter,
    indexer_settings,
    make_record,
    start_indexer,
)

GENRES = ["poetry", "crime", "science fiction"]


def book(i: int) -> dict[str, Any]:
    return {
        "title": f"Book number {i} about {'cats' if i % 2 else 'dogs'}",
        "genre": GENRES[i % 3],
        "price": 10 + i,
        "active": i % 4 != 0,
    }


async def index_books(settings: Settings) -> None:
    """25 books, then book 0..4 deleted (tombstones at v2); waits until all are committed."""
    writer = KafkaWriter(settings)
    topic = await writer.ensure_topic("books")
    indexer = start_indexer(settings)
    try:
        await writer.send_records(
            [make_record("books", f"b{i:02d}", 1, payload=book(i)) for i in range(25)]
            + [make_record("books", f"b{i:02d}", 2, EventType.DELETED) for i in range(5)]
        )
        await indexer.caught_up([topic])
    finally:
        await indexer.stop()
        writer.producer.close()
    es = AsyncElasticsearch(settings.es.url)
    try:
        await es.indices.refresh(index=settings.es.alias_for("books"))
    finally:
        await es.close()


@pytest.fixture
async def searcher(idx_settings: Settings, es_client: AsyncElasticsearch) -> ElasticsearchSearcher:
    await index_books(idx_settings)
    return ElasticsearchSearcher(es_client, idx_settings.es)


async def test_search_finds_text_filters_sorts_and_never_returns_tombstones(
    searcher: ElasticsearchSearcher,
) -> None:
    """q matches text, filters are exact, sort orders; deleted books (b00-b04) never appear."""
    everything = await searcher.search("books", SearchParams(size=100))
    assert everything.total == 20
    assert sorted(h["id"] for h in everything.hits) == [f"b{i:02d}" for i in range(5, 25)]
    assert all(h["version"] == 1 for h in everything.hits)

    cats = await searcher.search("books", SearchParams(q="cats", size=100))
    assert {h["id"] for h in cats.hits} == {f"b{i:02d}" for i in range(5, 25) if i % 2}
    assert all(h["score"] is not None and h["score"] > 0 for h in cats.hits)

    crime = await searcher.search(
        "books", SearchParams(filters=("genre:crime", "active:true"), size=100)
    )
    assert {h["id"] for h in crime.hits} == {
        f"b{i:02d}" for i in range(5, 25) if i % 3 == 1 and i % 4 != 0
    }
    scifi = await searcher.search("books", SearchParams(filters=("genre:science fiction",)))
    assert scifi.total == len([i for i in range(5, 25) if i % 3 == 2])
    cheap = await searcher.search("books", SearchParams(filters=("price:15",)))
    assert [h["id"] for h in cheap.hits] == ["b05"]

    by_price = await searcher.search("books", SearchParams(sort="-price", size=3))
    assert [h["document"]["price"] for h in by_price.hits] == [34, 33, 32]


async def test_search_after_pages_through_every_hit_exactly_once(
    searcher: ElasticsearchSearcher,
) -> None:
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        page = await searcher.search(
            "books", SearchParams(sort="-price", size=6, search_after=token)
        )
        seen += [h["id"] for h in page.hits]
        token = page.next
        if token is None:
            break
    assert seen == [f"b{i:02d}" for i in range(24, 4, -1)]


async def test_unknown_collection_is_an_empty_page_and_bad_params_are_param_errors(
    searcher: ElasticsearchSearcher,
) -> None:
    page = await searcher.search("nothing_here", SearchParams(q="x"))
    assert (page.total, page.hits, page.next) == (0, [], None)
    with pytest.raises(SearchParamError):
        await searcher.search("nothing_here", SearchParams(size=500))
    with pytest.raises(SearchParamError):
        await searcher.search("books", SearchParams(filters=("price:cheap",)))


async def test_search_route_end_to_end(api_client: ApiHandle) -> None:
    """GET /v1/collections/{c}/search is public and answers with the documented shape."""
    await index_books(indexer_settings(api_client.settings))
    client = api_client.client
    r = await client.get(
        "/v1/collections/books/search",
        params={"q": "dogs", "filter": ["genre:poetry"], "sort": "price", "size": 2},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    expected = [i for i in range(5, 25) if i % 2 == 0 and i % 3 == 0]
    assert body["total"] == len(expected)
    assert [h["id"] for h in body["hits"]] == [f"b{i:02d}" for i in expected[:2]]
    assert set(body["hits"][0]) == {"id", "version", "score", "document"}
    r2 = await client.get(
        "/v1/collections/books/search",
        params={
            "q": "dogs",
            "filter": ["genre:poetry"],
            "sort": "price",
            "size": 2,
            "search_after": body["next"],
        },
    )
    assert [h["id"] for h in r2.json()["hits"]] == [f"b{i:02d}" for i in expected[2:4]]

    unknown = await client.get("/v1/collections/unknown/search")
    assert unknown.status_code == 200
    assert unknown.json() == {
        "total": 0,
        "total_relation": "eq",
        "timed_out": False,
        "hits": [],
        "next": None,
    }

    for params, status in [
        ({"size": "101"}, 422),
        ({"search_after": "not-a-token"}, 400),
        ({"filter": "price:cheap"}, 400),
        ({"filter": "nocolon"}, 400),
        ({"sort": "-"}, 400),
    ]:
        bad = await client.get("/v1/collections/books/search", params=params)
        assert bad.status_code == status, (params, bad.text)
        assert bad.headers["content-type"].startswith("application/problem+json")
    invalid_name = await client.get("/v1/collections/Bad$Name/search")
    assert 400 <= invalid_name.status_code < 500
