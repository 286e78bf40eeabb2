"""Read back what Kafka holds (read_committed): the last checkpoint, published event ids.

Both reads run after the relay's `init_transactions`, so no transaction of ours is left
open; they read to each partition's high watermark (`infra.kafka.read_to_end`), so an
open transaction of any other producer makes them wait instead of stopping short.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import structlog

from infra.envelope import CE_ID, headers_dict
from infra.errors import FatalError
from infra.kafka import read_to_end, topic_names, topic_partitions
from infra.settings import KafkaSettings
from outbox_relay.checkpoint import Checkpoint, CheckpointDecodeError, decode_checkpoint

log = structlog.get_logger(__name__)


def read_checkpoint_blocking(settings: KafkaSettings, relay: str) -> Checkpoint | None:
    """The last committed checkpoint of `relay`, None if it never committed one."""
    last: bytes | None = None
    key = relay.encode()
    # From the beginning: compaction keeps the latest record per key.
    parts = topic_partitions(settings, [settings.checkpoint_topic])
    for message in read_to_end(settings, parts, purpose="relay-checkpoint-reader"):
        if message.key == key and message.value is not None:
            last = message.value
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
    return sorted(t for t in topic_names(settings) if pattern.match(t))


def published_ids_blocking(
    settings: KafkaSettings, collections: list[str], since: datetime | None
) -> set[str]:
    """Every `ce_id` in this relay's event topics with a timestamp at or after `since`."""
    parts = topic_partitions(settings, event_topics_blocking(settings, collections))
    ids: set[str] = set()
    for message in read_to_end(settings, parts, purpose="relay-event-reader", since=since):
        event_id = headers_dict(message.headers).get(CE_ID)
        if event_id:
            ids.add(event_id)
    return ids


async def published_ids(
    settings: KafkaSettings, collections: list[str], since: datetime | None
) -> set[str]:
    return await asyncio.to_thread(published_ids_blocking, settings, collections, since)
