"""The write path's additions: server time, who wrote it, consistency tokens, idempotency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
import time_machine
from structlog.testing import capture_logs

from infra.envelope import OutboxRecord
from infra.naming import IDEMPOTENCY_KEYS_COLLECTION
from tests.fixtures.api import ApiHandle

pytestmark = pytest.mark.integration

DOCS = "/v1/collections/books/documents"


async def _records(api: ApiHandle) -> list[OutboxRecord]:
    return [OutboxRecord.from_mongo(raw) for raw in await api.outbox.find({}).to_list()]


async def _server_now(api: ApiHandle) -> datetime:
    hello: dict[str, Any] = await api.db.client.admin.command("hello")
    local: datetime = hello["localTime"]
    return local if local.tzinfo else local.replace(tzinfo=UTC)


async def test_outbox_time_and_updated_at_come_from_mongodb_not_the_api_host_clock(
    api_client: ApiHandle,
) -> None:
    """The relay's history-loss window is built on `time`: a skewed API host must not move it."""
    headers = await api_client.writer_headers()
    # The API host's clock runs 10 minutes ahead; MongoDB's (another process) does not.
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10), tick=True):
        r = await api_client.client.put(f"{DOCS}/dune", json={"t": 1}, headers=headers)
    assert r.status_code == 201, r.text
    server_now = await _server_now(api_client)
    [record] = await _records(api_client)
    stored = await api_client.db["books"].find_one({"_id": "dune"})
    assert stored is not None
    updated_at = stored["updated_at"].replace(tzinfo=UTC)
    for stamp in (record.time, updated_at):
        assert abs(stamp - server_now) < timedelta(minutes=1), (stamp, server_now)


async def test_every_write_records_who_made_it(api_client: ApiHandle) -> None:
    token = await api_client.auth.token("writer")
    verified = await api_client.app.state.auth_client.verify(token)
    headers = {"Authorization": f"Bearer {token}"}
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        assert (await api_client.client.put(f"{DOCS}/a", json={}, headers=headers)).is_success
        assert (
            await api_client.client.patch(f"{DOCS}/a", json={"x": 1}, headers=headers)
        ).is_success
        assert (await api_client.client.delete(f"{DOCS}/a", headers=headers)).is_success
    records = await _records(api_client)
    assert len(records) == 3
    assert {r.auth_id for r in records} == {verified.user_id}
    written = [e for e in logs if e["event"] == "document_written"]
    assert [e["auth_id"] for e in written] == [verified.user_id] * 3
    headers_of = records[0].kafka_headers()
    assert ("ce_authid", verified.user_id.encode()) in headers_of


async def test_every_2xx_write_returns_a_consistency_token(api_client: ApiHandle) -> None:
    headers = await api_client.writer_headers()
    tokens = api_client.app.state.consistency_tokens
    created = await api_client.client.post(DOCS, json={"id": "b1"}, headers=headers)
    replaced = await api_client.client.put(f"{DOCS}/b1", json={"x": 1}, headers=headers)
    patched = await api_client.client.patch(f"{DOCS}/b1", json={"y": 2}, headers=headers)
    for version, r in enumerate([created, replaced, patched], start=1):
        assert r.is_success, r.text
        assert r.json()["token"] == r.headers["outbox-token"]
        written = tokens.read(r.json()["token"])
        assert (written.collection, written.document_id, written.version) == (
            "books",
            "b1",
            version,
        )
    deleted = await api_client.client.delete(f"{DOCS}/b1", headers=headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert "etag" not in deleted.headers  # nothing left to tag; the README says so
    assert tokens.read(deleted.headers["outbox-token"]).version == 4


async def test_a_repeated_post_with_the_same_idempotency_key_returns_the_first_result(
    api_client: ApiHandle,
) -> None:
    headers = {**await api_client.writer_headers(), "Idempotency-Key": "order-42"}
    first = await api_client.client.post(DOCS, json={"title": "Dune"}, headers=headers)
    again = await api_client.client.post(DOCS, json={"title": "Dune"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(await _records(api_client)) == 1
    assert await api_client.db["books"].count_documents({}) == 1


async def test_an_idempotency_key_reused_with_another_body_is_a_409_and_writes_nothing(
    api_client: ApiHandle,
) -> None:
    headers = {**await api_client.writer_headers(), "Idempotency-Key": "k1"}
    assert (await api_client.client.post(DOCS, json={"a": 1}, headers=headers)).status_code == 201
    r = await api_client.client.post(DOCS, json={"a": 2}, headers=headers)
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/idempotency-key-reused")
    assert len(await _records(api_client)) == 1


async def test_concurrent_repeats_of_one_idempotency_key_write_once(api_client: ApiHandle) -> None:
    headers = {**await api_client.writer_headers(), "Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *[api_client.client.post(DOCS, json={"n": 1}, headers=headers) for _ in range(6)]
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["event_id"] for r in responses}) == 1
    assert len(await _records(api_client)) == 1


async def test_idempotency_keys_are_per_user_and_kept_with_a_ttl(api_client: ApiHandle) -> None:
    alice = {**await api_client.writer_headers(), "Idempotency-Key": "same"}
    bob = {**await api_client.writer_headers(), "Idempotency-Key": "same"}
    a = await api_client.client.post(DOCS, json={"n": 1}, headers=alice)
    b = await api_client.client.post(DOCS, json={"n": 1}, headers=bob)
    assert a.json()["id"] != b.json()["id"]
    keys = api_client.db[IDEMPOTENCY_KEYS_COLLECTION]
    assert await keys.count_documents({}) == 2
    indexes = {i["name"]: i async for i in await keys.list_indexes()}
    assert indexes["expires_at_ttl"]["expireAfterSeconds"] == 0
    stored = await keys.find_one({})
    assert stored is not None
    assert "same" not in repr(stored["_id"]), "keys are stored hashed with their scope"


async def test_the_idempotency_collection_is_reserved(api_client: ApiHandle) -> None:
    r = await api_client.client.post(
        f"/v1/collections/{IDEMPOTENCY_KEYS_COLLECTION}/documents",
        json={},
        headers=await api_client.writer_headers(),
    )
    assert r.status_code == 422


@pytest.mark.parametrize("digits", [20, 5000])
async def test_an_if_match_of_any_length_is_a_412_never_a_500(
    api_client: ApiHandle, digits: int
) -> None:
    headers = await api_client.writer_headers()
    assert (await api_client.client.put(f"{DOCS}/x", json={}, headers=headers)).status_code == 201
    for method, kwargs in [("PUT", {"json": {}}), ("PATCH", {"json": {}}), ("DELETE", {})]:
        r = await api_client.client.request(
            method, f"{DOCS}/x", headers={**headers, "If-Match": f'"{"1" * digits}"'}, **kwargs
        )
        assert r.status_code == 412, (method, r.text)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 18446744073709551616}',
        b'{"n": -9223372036854775809}',
        b'{"n": 1' + b"0" * 400 + b"}",
    ],
)
async def test_integers_beyond_64_bits_are_a_422_and_never_stored(
    api_client: ApiHandle, raw: bytes
) -> None:
    r = await api_client.client.post(
        DOCS,
        content=raw,
        headers={**await api_client.writer_headers(), "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert await _records(api_client) == []
