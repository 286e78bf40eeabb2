"""Kafka refusing a dead letter, Kafka stalling a commit: neither stops the relay."""

from __future__ import annotations

import asyncio
import signal

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from infra.devstack import EmbeddedStack
from infra.health import ProgressMonitor
from infra.mongo import MongoClient, mongo_client
from infra.settings import KafkaSettings, Settings
from outbox_relay.progress import RelayState
from outbox_relay.publisher import KafkaEventPublisher
from outbox_relay.relay import OutboxRelay
from tests.conftest import ServerUrls, settings_for
from tests.fixtures.relay import (
    fast_relay,
    make_history,
    read_dlq,
    read_events,
    running_relay,
    wait_for_events,
    wait_until,
    write_outbox,
)
from tests.integration.outbox_relay.test_exactly_once import assert_exactly_once_in_order

pytestmark = pytest.mark.integration

COLLECTIONS = ("books", "films")


async def test_a_malformed_record_too_big_for_kafka_is_dead_lettered_without_its_body(
    settings: Settings, mongo: MongoClient
) -> None:
    """A poison record (no `type`) of 100 kB under a 16 kB limit: its dead letter carries no
    body, so Kafka takes it, and the records after it flow."""
    small = fast_relay(
        settings.model_copy(
            update={
                "kafka": KafkaSettings(
                    **{**settings.kafka.model_dump(), "message_max_bytes": 16384}
                )
            }
        )
    )
    records = make_history(30, collections=COLLECTIONS, documents=5)
    await write_outbox(mongo, small, records[:1])
    outbox = mongo[small.mongo.database][small.mongo.outbox_collection]
    poison = {
        "_id": "poison-1",
        "collection": "books",
        "document_id": "p1",
        "version": 1,
        "payload": {"blob": "x" * 100_000},
        "time": records[0].time,
    }
    await outbox.insert_one(poison)
    async with running_relay(small):
        await write_outbox(mongo, small, records[1:])
        await wait_for_events(small, COLLECTIONS, len(records), timeout_s=30)

        async def dead_lettered() -> bool:
            return len(await read_dlq(small)) >= 1

        await wait_until(dead_lettered, timeout_s=20, what="the poison record's dead letter")
    letters = await read_dlq(small)
    assert [m.ce_id for m in letters] == ["poison-1"]
    assert letters[0].value is None
    assert "malformed outbox record" in (letters[0].header("dlq_error") or "")
    assert_exactly_once_in_order(await read_events(small, COLLECTIONS), records)


async def test_a_commit_slower_than_its_timeout_is_retried_not_turned_into_a_crash(
    pausable_stack: EmbeddedStack,
) -> None:
    """The broker stops answering for 4 s with commits timing out after 1 s: the relay calls
    commit again instead of aborting, keeps running, and publishes everything exactly once."""
    settings = fast_relay(
        settings_for(
            ServerUrls(
                pausable_stack.mongo_uri, pausable_stack.kafka_bootstrap, pausable_stack.es_url
            )
        )
    )
    kafka = pausable_stack.kafka_es.process
    assert kafka is not None
    records = make_history(300, collections=COLLECTIONS, documents=20)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    state = RelayState(name=settings.relay.name, monitor=ProgressMonitor(stall_after_s=30))
    state.became_active()
    relay = OutboxRelay(
        settings,
        client,
        state,
        still_leader=lambda: True,
        publisher=KafkaEventPublisher(settings, commit_timeout_s=1.0),
    )
    task = asyncio.create_task(relay.run())
    try:
        await write_outbox(client, settings, records[:50])
        await wait_for_events(settings, COLLECTIONS, 50)
        writer = asyncio.create_task(
            write_outbox(client, settings, records[50:], per_transaction=2, pause_s=0.01)
        )
        before = state.batches_committed

        async def committing() -> bool:
            return state.batches_committed > before

        await wait_until(committing, timeout_s=20, what="batches flowing")
        kafka.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(4.0)  # the stall under test lasts this long
        finally:
            kafka.send_signal(signal.SIGCONT)
        await writer
        await wait_for_events(settings, COLLECTIONS, len(records), timeout_s=60)
        assert not task.done(), task.exception() if task.done() else None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    assert_exactly_once_in_order(await read_events(settings, COLLECTIONS), records)


async def test_the_checkpoint_topic_is_the_relay_names_own_and_compacts_hourly(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """`<ns>.relay.<name>.checkpoints`: one partition, compacted, a new segment every hour
    and compaction at 10% dirty, so a restart reads about an hour of checkpoints at most."""
    async with running_relay(relay_settings):
        await write_outbox(mongo, relay_settings, make_history(5, collections=COLLECTIONS))
        await wait_for_events(relay_settings, COLLECTIONS, 5)
    topic = f"{relay_settings.kafka.namespace}.relay.{relay_settings.relay.name}.checkpoints"
    admin = AdminClient({"bootstrap.servers": relay_settings.kafka.bootstrap})
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    config = admin.describe_configs([ConfigResource("topic", topic)])
    values = {k: v.value for k, v in next(iter(config.values())).result().items()}
    assert len(metadata.partitions) == 1
    assert values["cleanup.policy"] == "compact"
    assert values["segment.ms"] == "3600000"
    assert values["min.cleanable.dirty.ratio"] == "0.1"
