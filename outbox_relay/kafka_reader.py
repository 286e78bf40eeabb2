"""Read back what Kafka holds (read_committed): the last checkpoint, published event ids.

Both reads run after the relay's `init_transactions`, so no transaction of ours is left
open and the last stable offset is the end of each partition.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterable
from datetime import datetime

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.envelope import CE_ID, headers_dict
from infra.errors import FatalError, RetriableError
from infra.kafka import admin_client, consumer_config, map_kafka_error
from infra.settings import KafkaSettings
from outbox_relay.checkpoint import Checkpoint, CheckpointDecodeError, decode_checkpoint

log = structlog.get_logger(__name__)

READ_TIMEOUT_S = 60.0


def _reader(settings: KafkaSettings) -> Consumer:
    # A throwaway group: this consumer only assigns partitions and never commits.
    return Consumer(
        consumer_config(
            settings,
            f"{settings.namespace}.relay-reader.{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True, "auto.offset.reset": "earliest"},
        )
    )


def _drain(
    consumer: Consumer, partitions: list[TopicPartition]
) -> Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]]:
    """Yield (key, value, headers) of every message from the assigned offsets to the end."""
    if not partitions:
        return
    consumer.assign(partitions)
    pending = {(tp.topic, tp.partition) for tp in partitions}
    deadline = time.monotonic() + READ_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise RetriableError(f"reading back Kafka timed out; unfinished: {sorted(pending)}")
        message = consumer.poll(0.5)
        if message is None:
            continue
        err = message.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                pending.discard((message.topic(), message.partition()))
                continue
            if err.fatal() or not err.retriable():
                raise FatalError(f"reading back Kafka failed: {err}")
            continue
        headers = message.headers()
        if isinstance(headers, dict):
            headers = list(headers.items())
        yield message.key(), message.value(), [(k, _as_bytes(v)) for k, v in headers or []]


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _partitions(admin: AdminClient, topics: Iterable[str]) -> list[TopicPartition]:
    metadata = admin.list_topics(timeout=10).topics
    return [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata
        for p in sorted(metadata[topic].partitions)
    ]


def read_checkpoint_blocking(settings: KafkaSettings, relay: str) -> Checkpoint | None:
    """The last committed checkpoint of `relay`, None if it never committed one."""
    consumer = _reader(settings)
    try:
        admin = admin_client(settings)
        parts = _partitions(admin, [settings.checkpoint_topic])
        for tp in parts:
            tp.offset = -2  # OFFSET_BEGINNING: compaction keeps the latest per key
        last: bytes | None = None
        key = relay.encode()
        for k, v, _ in _drain(consumer, parts):
            if k == key and v is not None:
                last = v
    except KafkaException as e:
        raise map_kafka_error(e) from e
    finally:
        consumer.close()
    if last is None:
        return None
    try:
        return decode_checkpoint(last)
    except CheckpointDecodeError as e:
        raise FatalError(f"unreadable checkpoint for relay {relay!r}: {e}") from e


async def read_checkpoint(settings: KafkaSettings, relay: str) -> Checkpoint | None:
    return await asyncio.to_thread(read_checkpoint_blocking, settings, relay)


def event_topics_blocking(settings: KafkaSettings, collections: list[str]) -> list[str]:
    """Existing event topics of this relay's collections (all collections when empty)."""
    if collections:
        wanted = {settings.event_topic(c) for c in collections}
        return sorted(wanted)
    pattern = re.compile(settings.event_topic_pattern)
    topics = admin_client(settings).list_topics(timeout=10).topics
    return sorted(t for t in topics if pattern.match(t))


def published_ids_blocking(
    settings: KafkaSettings, collections: list[str], since: datetime | None
) -> set[str]:
    """Every `ce_id` in this relay's event topics with a timestamp at or after `since`."""
    consumer = _reader(settings)
    ids: set[str] = set()
    try:
        admin = admin_client(settings)
        parts = _partitions(admin, event_topics_blocking(settings, collections))
        if since is None:
            for tp in parts:
                tp.offset = -2
        elif parts:
            millis = int(since.timestamp() * 1000)
            for tp in parts:
                tp.offset = millis
            parts = consumer.offsets_for_times(parts, timeout=10)
            # -1: no message at or after `since` in that partition; nothing to read there.
            parts = [tp for tp in parts if tp.offset >= 0]
        for _, _, headers in _drain(consumer, parts):
            event_id = headers_dict(headers).get(CE_ID)
            if event_id:
                ids.add(event_id)
    except KafkaException as e:
        raise map_kafka_error(e) from e
    finally:
        consumer.close()
    return ids


async def published_ids(
    settings: KafkaSettings, collections: list[str], since: datetime | None
) -> set[str]:
    return await asyncio.to_thread(published_ids_blocking, settings, collections, since)
