"""The relay publishes every outbox record exactly once, in version order per document."""

from __future__ import annotations

from collections import defaultdict

import pytest

from infra.envelope import OutboxRecord
from infra.mongo import MongoClient
from infra.settings import Settings
from outbox_relay.checkpoint import CheckpointMode
from tests.fixtures.relay import (
    ReadMessage,
    lease_document,
    make_history,
    read_checkpoints,
    read_events,
    running_relay,
    wait_for_events,
    wait_until,
    write_outbox,
)

pytestmark = pytest.mark.integration

COLLECTIONS = ("books", "films")


def assert_exactly_once_in_order(messages: list[ReadMessage], records: list[OutboxRecord]) -> None:
    """Exactly one message per record, each document's events in version order on one partition."""
    ids = [m.ce_id for m in messages]
    assert len(ids) == len(set(ids)), "a ce_id was published more than once"
    assert set(ids) == {r.event_id for r in records}
    by_doc: dict[tuple[str, bytes | None], list[ReadMessage]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.topic, m.partition, m.offset)):
        by_doc[(m.topic, m.key)].append(m)
    for (topic, key), doc_messages in by_doc.items():
        assert len({m.partition for m in doc_messages}) == 1, f"{topic}/{key!r} split"
        versions = [int(m.header("ce_aggregateversion") or 0) for m in doc_messages]
        assert versions == sorted(versions), f"{topic}/{key!r} out of order: {versions}"


async def test_every_record_is_published_once_with_the_contract_headers(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """N writes (some before the relay's first start, some while it runs) → exactly N messages."""
    records = make_history(300, collections=COLLECTIONS, documents=25)
    await write_outbox(mongo, relay_settings, records[:120])  # before the first start
    async with running_relay(relay_settings):
        await write_outbox(mongo, relay_settings, records[120:], per_transaction=3)
        messages = await wait_for_events(relay_settings, COLLECTIONS, len(records))

        async def streaming() -> bool:
            # The first start's recovery may publish everything before it hands over to
            # the stream: stopping in between would leave a `recovering` checkpoint.
            checkpoints = await read_checkpoints(relay_settings)
            return bool(checkpoints) and checkpoints[-1].mode is CheckpointMode.STREAM

        await wait_until(streaming, timeout_s=30, what="a stream-mode checkpoint")
    messages = await read_events(relay_settings, COLLECTIONS)
    assert_exactly_once_in_order(messages, records)

    by_id = {r.event_id: r for r in records}
    for m in messages:
        record = by_id[m.ce_id]
        assert m.topic == relay_settings.kafka.event_topic(record.collection)
        assert m.key == record.kafka_key()
        assert m.value == record.kafka_value()  # None for a delete
        assert m.headers == record.kafka_headers()
    assert any(m.value is None for m in messages), "the history has deletes"

    checkpoints = await read_checkpoints(relay_settings)
    assert checkpoints[-1].relay == relay_settings.relay.name
    assert checkpoints[-1].mode is CheckpointMode.STREAM
    assert checkpoints[-1].events_total == len(records)
    lease = await lease_document(mongo, relay_settings)
    assert lease is not None
    assert lease["role"] == "released"  # a clean stop hands the lease over at once


async def test_a_relay_with_a_collection_filter_publishes_only_its_share(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """Relays with different names split the outbox by collection, each exactly once."""
    records = make_history(120, collections=COLLECTIONS, documents=10)
    books = relay_settings.model_copy(
        update={
            "relay": relay_settings.relay.model_copy(
                update={"name": "r-books", "collections": ["books"]}
            )
        }
    )
    films = relay_settings.model_copy(
        update={
            "relay": relay_settings.relay.model_copy(
                update={"name": "r-films", "collections": ["films"]}
            )
        }
    )
    async with running_relay(books), running_relay(films):
        await write_outbox(mongo, relay_settings, records)
        await wait_for_events(relay_settings, COLLECTIONS, len(records))
    messages = await read_events(relay_settings, COLLECTIONS)
    assert_exactly_once_in_order(messages, records)
    by_relay = {
        name: (await read_checkpoints(relay_settings, name))[-1].events_total
        for name in ("r-books", "r-films")
    }
    assert by_relay == {
        "r-books": sum(r.collection == "books" for r in records),
        "r-films": sum(r.collection == "films" for r in records),
    }
