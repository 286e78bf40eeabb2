"""Writes against real MongoDB: each one is the document plus exactly one outbox record."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.document_store import MongoDocumentStore, WriteContext
from api.write_rules import Create, IfMatch, Patch, PreconditionFailedError, Replace
from infra.envelope import EventType, OutboxRecord
from tests.fixtures.api import ApiHandle

DOCS = "/v1/collections/books/documents"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def outbox_records(api: ApiHandle, document_id: str | None = None) -> list[OutboxRecord]:
    query: dict[str, Any] = {} if document_id is None else {"document_id": document_id}
    raws = await api.outbox.find(query).sort("version", 1).to_list()
    return [OutboxRecord.from_mongo(raw) for raw in raws]


async def stored(api: ApiHandle, document_id: str, collection: str = "books") -> Any:
    return await api.db[collection].find_one({"_id": document_id})


async def test_a_create_stores_the_document_and_exactly_one_outbox_record(
    api_client: ApiHandle,
) -> None:
    headers = {**await api_client.writer_headers(), "traceparent": TRACEPARENT}
    r = await api_client.client.post(DOCS, json={"id": "b1", "title": "Dune"}, headers=headers)

    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "b1"
    assert body["version"] == 1
    assert body["document"] == {"title": "Dune"}
    assert r.headers["etag"] == '"1"'
    assert r.headers["location"] == f"{DOCS}/b1"
    raw = await stored(api_client, "b1")
    assert raw["version"] == 1
    assert raw["document"] == {"title": "Dune"}
    assert raw["deleted"] is False
    [record] = await outbox_records(api_client)
    assert record.event_id == body["event_id"]
    assert (record.collection, record.document_id, record.version) == ("books", "b1", 1)
    assert record.type is EventType.CREATED
    assert record.payload == {"title": "Dune"}
    assert record.traceparent == r.headers["traceparent"]
    assert record.traceparent is not None
    assert record.traceparent.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_a_create_without_id_generates_one(api_client: ApiHandle) -> None:
    r = await api_client.client.post(DOCS, json={"x": 1}, headers=await api_client.writer_headers())
    assert r.status_code == 201
    generated = r.json()["id"]
    assert len(generated) == 32
    got = await api_client.client.get(f"{DOCS}/{generated}")
    assert got.json() == {"id": generated, "version": 1, "document": {"x": 1}}
    assert got.headers["etag"] == '"1"'


async def test_every_write_advances_the_version_and_adds_one_matching_outbox_record(
    api_client: ApiHandle,
) -> None:
    h = await api_client.writer_headers()
    c = api_client.client
    assert (await c.put(f"{DOCS}/b2", json={"a": 1}, headers=h)).status_code == 201
    r = await c.put(f"{DOCS}/b2", json={"id": "b2", "a": 2}, headers=h)
    assert r.status_code == 200
    assert r.json()["version"] == 2
    r = await c.patch(
        f"{DOCS}/b2",
        content=b'{"b": {"c": 3}}',
        headers={**h, "content-type": "application/merge-patch+json"},
    )
    assert r.status_code == 200
    assert r.json()["document"] == {"a": 2, "b": {"c": 3}}
    assert (await c.delete(f"{DOCS}/b2", headers=h)).status_code == 204

    records = await outbox_records(api_client, "b2")
    assert [(r.version, r.type) for r in records] == [
        (1, EventType.CREATED),
        (2, EventType.UPDATED),
        (3, EventType.UPDATED),
        (4, EventType.DELETED),
    ]
    assert [r.payload for r in records] == [{"a": 1}, {"a": 2}, {"a": 2, "b": {"c": 3}}, None]
    raw = await stored(api_client, "b2")
    assert (raw["version"], raw["deleted"], raw["document"]) == (4, True, None)


async def test_delete_then_recreate_continues_the_version(api_client: ApiHandle) -> None:
    h = await api_client.writer_headers()
    c = api_client.client
    await c.post(DOCS, json={"id": "b3", "v": 1}, headers=h)
    assert (await c.delete(f"{DOCS}/b3", headers=h)).status_code == 204

    got = await c.get(f"{DOCS}/b3")
    assert got.status_code == 404
    assert got.headers["content-type"] == "application/problem+json"
    assert (await c.delete(f"{DOCS}/b3", headers=h)).status_code == 404
    assert (await c.patch(f"{DOCS}/b3", json={"v": 2}, headers=h)).status_code == 404

    r = await c.post(DOCS, json={"id": "b3", "v": 3}, headers=h)
    assert r.status_code == 201
    assert r.json()["version"] == 3
    r = await c.delete(f"{DOCS}/b3", headers=h)
    r = await c.put(f"{DOCS}/b3", json={"v": 5}, headers=h)
    assert r.status_code == 201
    assert r.json()["version"] == 5
    records = await outbox_records(api_client, "b3")
    assert [(r.version, r.type.value) for r in records] == [
        (1, "created"),
        (2, "deleted"),
        (3, "created"),
        (4, "deleted"),
        (5, "created"),
    ]


async def test_create_of_a_live_id_conflicts_and_writes_nothing(api_client: ApiHandle) -> None:
    h = await api_client.writer_headers()
    await api_client.client.post(DOCS, json={"id": "b4", "v": 1}, headers=h)
    r = await api_client.client.post(DOCS, json={"id": "b4", "v": 2}, headers=h)
    assert r.status_code == 409
    assert (await stored(api_client, "b4"))["document"] == {"v": 1}
    assert len(await outbox_records(api_client)) == 1


@pytest.mark.parametrize("good", ['"2"', "2", 'W/"2"', "*"])
async def test_if_match_forms_that_match_allow_the_write(api_client: ApiHandle, good: str) -> None:
    h = await api_client.writer_headers()
    await api_client.client.put(f"{DOCS}/b5", json={"v": 1}, headers=h)
    await api_client.client.put(f"{DOCS}/b5", json={"v": 2}, headers=h)
    r = await api_client.client.put(f"{DOCS}/b5", json={"v": 3}, headers={**h, "If-Match": good})
    assert r.status_code == 200
    assert r.json()["version"] == 3


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_a_stale_if_match_is_412_and_leaves_nothing_behind(
    api_client: ApiHandle, method: str
) -> None:
    h = await api_client.writer_headers()
    await api_client.client.put(f"{DOCS}/b6", json={"v": 1}, headers=h)
    await api_client.client.put(f"{DOCS}/b6", json={"v": 2}, headers=h)
    before = await stored(api_client, "b6")

    r = await api_client.client.request(
        method, f"{DOCS}/b6", json={"v": 9}, headers={**h, "If-Match": '"1"'}
    )

    assert r.status_code == 412
    assert r.headers["content-type"] == "application/problem+json"
    assert await stored(api_client, "b6") == before
    assert [rec.version for rec in await outbox_records(api_client)] == [1, 2]


@pytest.mark.parametrize("header", ["*", '"1"'])
async def test_if_match_on_an_absent_document_is_412_and_creates_nothing(
    api_client: ApiHandle, header: str
) -> None:
    h = {**await api_client.writer_headers(), "If-Match": header}
    r = await api_client.client.put(f"{DOCS}/nope", json={"v": 1}, headers=h)
    assert r.status_code == 412
    assert await stored(api_client, "nope") is None
    assert await outbox_records(api_client) == []


class InjectedFailureError(Exception):
    pass


@pytest.mark.parametrize("existing", [False, True])
async def test_a_failure_inside_the_transaction_leaves_neither_document_nor_outbox_record(
    api_client: ApiHandle, existing: bool
) -> None:
    seen: list[WriteContext] = []

    async def fail_after_document_write(ctx: WriteContext) -> None:
        seen.append(ctx)
        # The document write is visible inside the transaction...
        inside = await api_client.db["books"].find_one({"_id": "b7"}, session=ctx.session)
        assert inside is not None
        assert inside["version"] == ctx.plan.version
        raise InjectedFailureError("boom")

    settings = api_client.settings
    plain = MongoDocumentStore(api_client.app.state.mongo, settings.mongo)
    failing = MongoDocumentStore(
        api_client.app.state.mongo, settings.mongo, after_document_write=fail_after_document_write
    )
    if existing:
        await plain.write("books", "b7", Create({"v": 1}))
    before_doc = await stored(api_client, "b7")
    before_outbox = await outbox_records(api_client)

    with pytest.raises(InjectedFailureError):
        await failing.write("books", "b7", Replace({"v": 2}))

    assert len(seen) == 1
    # ...and gone after the abort.
    assert await stored(api_client, "b7") == before_doc
    assert await outbox_records(api_client) == before_outbox


async def test_a_rejected_write_through_the_store_leaves_nothing(api_client: ApiHandle) -> None:
    store = MongoDocumentStore(api_client.app.state.mongo, api_client.settings.mongo)
    await store.write("books", "b8", Create({"v": 1}))
    with pytest.raises(PreconditionFailedError):
        await store.write("books", "b8", Patch({"v": 2}), if_match=IfMatch.parse('"7"'))
    assert (await stored(api_client, "b8"))["version"] == 1
    assert len(await outbox_records(api_client)) == 1


async def test_concurrent_merge_patches_lose_nothing_and_number_versions_without_gaps(
    api_client: ApiHandle,
) -> None:
    h = await api_client.writer_headers()
    c = api_client.client
    await c.post(DOCS, json={"id": "hot", "base": True}, headers=h)

    responses = await asyncio.gather(
        *(c.patch(f"{DOCS}/hot", json={f"f{i}": i}, headers=h) for i in range(40))
    )

    assert [r.status_code for r in responses] == [200] * 40
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 42))
    records = await outbox_records(api_client, "hot")
    assert [r.version for r in records] == list(range(1, 42))
    final = (await c.get(f"{DOCS}/hot")).json()
    assert final["version"] == 41
    assert final["document"] == {"base": True, **{f"f{i}": i for i in range(40)}}
    # Each record's payload is the document after that write: it grows by one field a step.
    assert [len(r.payload or {}) for r in records] == list(range(1, 42))
