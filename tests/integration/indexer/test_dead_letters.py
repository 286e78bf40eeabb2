"""The DLQ never stalls or kills the indexer (delivery S6): the topic is created with the
event size limit, and a dead letter Kafka will not take keeps its headers without its value."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from confluent_kafka import Consumer
from confluent_kafka.admin import ConfigResource, NewTopic
from elasticsearch import AsyncElasticsearch

from indexer.consumer import KafkaEventSource
from indexer.dlq_writer import KafkaDeadLetterWriter
from indexer.pipeline import Indexer
from indexer.progress import IndexerState
from indexer.sink import ElasticsearchSink
from infra.dead_letter import DeadLetter
from infra.envelope import headers_dict
from infra.kafka import admin_client, consumer_config, event_topic_config
from infra.settings import Settings
from tests.fixtures.indexer import (
    KafkaWriter,
    dead_letters,
    dlq_size,
    group_caught_up,
    indexed_sources,
    indexer_settings,
    make_record,
    start_indexer,
    wait_until,
)


def _poison(
    collection: str, doc_id: str, value_bytes: int
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A message with valid event headers and a value that is not JSON (poison), sized."""
    record = make_record(collection, doc_id, 1)
    return record.kafka_key(), b"{" + b"x" * (value_bytes - 1), record.kafka_headers()


def _topic_config(settings: Settings, topic: str) -> dict[str, str]:
    admin = admin_client(settings.kafka)
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    (future,) = futures.values()
    return {name: entry.value for name, entry in future.result().items()}


def _create_topic(settings: Settings, topic: str, config: dict[str, str]) -> None:
    admin = admin_client(settings.kafka)
    for future in admin.create_topics([NewTopic(topic, 1, 1, config=config)]).values():
        future.result()


async def test_the_dlq_topic_takes_a_dead_letter_as_large_as_an_event(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """A 1.5 MB poison event (under the 2 MiB event limit, over Kafka's 1 MB default): the
    indexer creates the DLQ topic with the events' `max.message.bytes`, so the dead letter
    arrives whole, and the next event is indexed."""
    settings = idx_settings
    topic = await kafka_writer.ensure_topic("books")
    key, value, headers = _poison("books", "big", 1_500_000)
    await kafka_writer.send_raw([(topic, key, value, headers)])
    await kafka_writer.send_records([make_record("books", "after", 1)])
    indexer = start_indexer(settings)
    try:
        await indexer.caught_up([topic], timeout_s=30)
    finally:
        await indexer.stop()
    config = await asyncio.to_thread(_topic_config, settings, settings.kafka.dlq_topic)
    assert config["max.message.bytes"] == event_topic_config(settings.kafka)["max.message.bytes"]
    (letter,) = await asyncio.to_thread(dead_letters, settings, 1)
    assert letter.value() == value
    assert set(await indexed_sources(es_client, settings.es.alias_for("books"))) == {"after"}


async def test_a_dead_letter_too_large_for_the_dlq_topic_keeps_its_headers_and_drops_its_value(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """A DLQ topic created earlier with a smaller `max.message.bytes` refuses the dead
    letter: it is written again without its value (the outbox keeps the body), its
    original headers and the error kept; the partition moves on."""
    settings = idx_settings
    await asyncio.to_thread(
        _create_topic, settings, settings.kafka.dlq_topic, {"max.message.bytes": "100000"}
    )
    topic = await kafka_writer.ensure_topic("books")
    key, value, headers = _poison("books", "big", 500_000)
    await kafka_writer.send_raw([(topic, key, value, headers)])
    await kafka_writer.send_records([make_record("books", "after", 1)])
    indexer = start_indexer(settings)
    try:
        await indexer.caught_up([topic], timeout_s=30)
        assert not indexer.task.done()
    finally:
        await indexer.stop()
    (letter,) = await asyncio.to_thread(dead_letters, settings, 1)
    assert letter.value() is None
    assert letter.key() == key
    kept = headers_dict(letter.headers())
    assert kept["ce_id"] == headers_dict(headers)["ce_id"]
    error = DeadLetter.from_kafka(key=None, value=None, headers=letter.headers()).error
    assert "not JSON" in error
    assert "value dropped" in error
    assert set(await indexed_sources(es_client, settings.es.alias_for("books"))) == {"after"}


async def test_a_dead_letter_the_producer_refuses_at_once_never_stops_the_indexer(
    settings: Settings, es_client: AsyncElasticsearch
) -> None:
    """An event just under the message size limit is poison; its dead letter (the event
    plus the DLQ headers) is over it, so `produce()` raises at once instead of reporting
    later. The indexer writes it without its value and keeps going."""
    small = settings.kafka.model_copy(update={"message_max_bytes": 64 * 1024})
    idx = indexer_settings(settings.model_copy(update={"kafka": small}))
    writer = KafkaWriter(idx)
    topic = await writer.ensure_topic("books")
    limit = int(event_topic_config(idx.kafka)["max.message.bytes"])
    record = make_record("books", "edge", 1)
    header_bytes = sum(len(k) + len(v) for k, v in record.kafka_headers())
    size = limit - header_bytes - len(record.kafka_key()) - 200
    key, value, headers = _poison("books", "edge", size)
    indexer = start_indexer(idx)
    try:
        await writer.send_raw([(topic, key, value, headers)])
        await writer.send_records([make_record("books", "after", 1)])
        await indexer.caught_up([topic], timeout_s=30)
        assert not indexer.task.done()
    finally:
        await indexer.stop()
        await asyncio.to_thread(writer.producer.close)
    (letter,) = await asyncio.to_thread(dead_letters, idx, 1)
    assert letter.value() is None
    assert headers_dict(letter.headers())["ce_id"] == headers_dict(headers)["ce_id"]
    assert set(await indexed_sources(es_client, idx.es.alias_for("books"))) == {"after"}


class _RebalanceDuringDelivery:
    """The real DLQ writer; its first delivery waits while another member joins the group.

    The wait ends when the newcomer's rebalance completes (it gets its assignment), or after
    `wait_s` if the indexer holds the rebalance back until the dead letter is written.
    """

    def __init__(self, settings: Settings, topic: str, wait_s: float = 8.0) -> None:
        self._writer = KafkaDeadLetterWriter(settings.kafka)
        self._settings = settings
        self._topic = topic
        self._wait_s = wait_s
        self._delivered = 0
        self.newcomer_assigned = threading.Event()
        self._stop = threading.Event()
        self._newcomer: threading.Thread | None = None

    async def prepare(self) -> None:
        await self._writer.prepare()

    def deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        self._delivered += 1
        if self._delivered == 1:
            self._newcomer = threading.Thread(target=self._join_group, daemon=True)
            self._newcomer.start()
            self.newcomer_assigned.wait(self._wait_s)
        return self._writer.deliver(letters)

    def _join_group(self) -> None:
        # A dynamic member: it leaves the group on close (a static one would not).
        consumer = Consumer(consumer_config(self._settings.kafka, self._settings.indexer.group_id))
        consumer.subscribe([self._topic], on_assign=lambda _c, _p: self.newcomer_assigned.set())
        while not self._stop.is_set():
            consumer.poll(0.1)
        consumer.close()  # leaves the group: the indexer gets every partition back

    def leave(self) -> None:
        self._stop.set()
        if self._newcomer is not None:
            self._newcomer.join(30)

    def close(self) -> None:
        self._writer.close()

    def shutdown(self) -> None:
        self._writer.shutdown()


async def test_a_rebalance_while_a_dead_letter_is_written_never_writes_it_twice(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """A new topic or member rebalances the group while a batch is being dead-lettered (the
    fault harness saw it when a writer created a collection): the batch's offsets are not
    committed for partitions handed over, so its messages come back; the poison one is
    acknowledged without a second dead letter (it was dead-lettered three times before)."""
    settings = idx_settings
    topic = await kafka_writer.ensure_topic("books")
    await kafka_writer.send_raw([(topic, *_poison("books", "bad", 100))])
    await kafka_writer.send_records([make_record("books", "good", 1)])
    dead_letter_sink = _RebalanceDuringDelivery(settings, topic)
    source = KafkaEventSource(settings)
    indexer = Indexer(
        settings,
        source=source,
        sink=ElasticsearchSink(es_client, settings.es),
        dead_letters=dead_letter_sink,
        state=IndexerState(),
        instance=source.instance_id,
    )
    task = asyncio.ensure_future(indexer.run())
    try:
        await wait_until(
            dead_letter_sink.newcomer_assigned.is_set, timeout_s=60, what="the newcomer's turn"
        )
        await asyncio.to_thread(dead_letter_sink.leave)
        await group_caught_up(settings, [topic], timeout_s=60, alive=lambda: _alive(task))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert await asyncio.to_thread(dlq_size, settings) == 1
    assert "good" in await indexed_sources(es_client, settings.es.alias_for("books"))


def _alive(task: asyncio.Task[None]) -> None:
    if task.done():
        task.result()
