"""The indexer rides out an Elasticsearch outage (a private stack it can stop)."""

from __future__ import annotations

import asyncio

from confluent_kafka import Consumer, TopicPartition

from infra.devstack import EmbeddedStack
from infra.elastic import elastic_client
from infra.settings import Settings
from tests.conftest import ServerUrls, settings_for
from tests.fixtures.indexer import (
    KafkaWriter,
    indexed_sources,
    indexer_settings,
    make_record,
    read_all,
    start_indexer,
    wait_until,
)

EVENTS = 4000


def group_offsets(settings: Settings, topic: str) -> dict[tuple[str, int], int]:
    """The indexer group's committed offsets, as the broker has them."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap, "group.id": settings.indexer.group_id}
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.committed(partitions, timeout=15)
            if tp.offset >= 0
        }
    finally:
        consumer.close()


async def test_indexer_survives_an_elasticsearch_outage_and_catches_up_without_restart(
    private_stack: EmbeddedStack,
) -> None:
    """Elasticsearch stopped mid-stream and started again: the indexer retries the batch in
    flight, never exits, and ends with every event indexed exactly at its version.

    noida-db serves Kafka and Elasticsearch from one process, so stopping it stops Kafka
    too; the indexer still has to survive both and catch up without a restart of its own.
    """
    urls = ServerUrls(private_stack.mongo_uri, private_stack.kafka_bootstrap, private_stack.es_url)
    settings = indexer_settings(settings_for(urls), batch_max_events=10)
    writer = KafkaWriter(settings)
    topic = await writer.ensure_topic("books")
    indexer = start_indexer(settings)
    es = elastic_client(settings.es)
    try:
        await writer.send_records([make_record("books", "warmup", 1)])
        await indexer.caught_up([topic])
        await writer.send_records(make_record("books", f"b{i}", 1) for i in range(EVENTS))
        await asyncio.to_thread(private_stack.kafka_es.stop)

        await wait_until(
            lambda: indexer.state.retrying_since is not None,
            timeout_s=15,
            what="the indexer to retry its batch against the stopped Elasticsearch",
        )
        await asyncio.sleep(1.0)  # the outage lasts a while: several retries, not one
        assert not indexer.task.done(), "the indexer exited during the outage"
        await asyncio.to_thread(private_stack.kafka_es.start)

        await indexer.caught_up([topic], timeout_s=60)
        await writer.send_records([make_record("books", "after", 1)])
        await indexer.caught_up([topic], timeout_s=30)
        sources = await indexed_sources(es, settings.es.alias_for("books"))
        assert len(sources) == EVENTS + 2
        assert {s["_version"] for s in sources.values()} == {1}
        assert indexer.state.retrying_since is None
    finally:
        await indexer.stop()
        await es.close()
        await asyncio.to_thread(writer.producer.close)


async def test_shutdown_during_an_outage_exits_and_commits_nothing_unacknowledged(
    private_stack: EmbeddedStack,
) -> None:
    """SIGTERM while the batch in flight cannot reach Elasticsearch: the indexer abandons
    it, commits no offset beyond what was acknowledged, and exits; the next indexer
    indexes every event."""
    urls = ServerUrls(private_stack.mongo_uri, private_stack.kafka_bootstrap, private_stack.es_url)
    settings = indexer_settings(settings_for(urls), batch_max_events=10)
    writer = KafkaWriter(settings)
    topic = await writer.ensure_topic("books")
    first = start_indexer(settings)
    es = elastic_client(settings.es)
    try:
        await writer.send_records([make_record("books", "warmup", 1)])
        await first.caught_up([topic])
        await writer.send_records(make_record("books", f"b{i}", 1) for i in range(EVENTS))
        await asyncio.to_thread(private_stack.kafka_es.stop)
        await wait_until(
            lambda: first.state.retrying_since is not None,
            timeout_s=15,
            what="the indexer to retry its batch against the stopped Elasticsearch",
        )
        await asyncio.wait_for(first.stop(), timeout=90)

        await asyncio.to_thread(private_stack.kafka_es.start)
        # Commit only what was acknowledged: every message below the group's committed
        # offset (as the restarted broker has it) is in the restarted index, though
        # nothing has indexed since the outage began.
        committed = await asyncio.to_thread(group_offsets, settings, topic)
        indexed = await indexed_sources(es, settings.es.alias_for("books"))
        messages = await asyncio.to_thread(read_all, settings, topic, EVENTS + 1)
        assert len(messages) == EVENTS + 1
        below = [
            m.key().decode()
            for m in messages
            if m.offset() < committed.get((m.topic(), m.partition()), 0)
        ]
        assert len(below) < EVENTS + 1, "the abandoned batch was committed"
        assert set(below) <= set(indexed)
        second = start_indexer(settings)
        try:
            await second.caught_up([topic], timeout_s=60)
        finally:
            await second.stop()
        sources = await indexed_sources(es, settings.es.alias_for("books"))
        assert len(sources) == EVENTS + 1
    finally:
        await first.stop()
        await es.close()
        await asyncio.to_thread(writer.producer.close)
