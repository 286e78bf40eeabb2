"""Read back what Kafka holds (read_committed): the last checkpoint, what was published.

Both reads run after the relay's `init_transactions`, so no transaction of ours is left
open. A relay's checkpoints live in a topic only its own `transactional.id` writes, so no
other producer's open transaction can hold them back; every read goes to each partition's
high watermark (`infra.kafka.read_to_end`), so an open transaction of another producer on
an event topic or the DLQ makes the read wait for it instead of stopping short.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from infra.dead_letter import DLQ_SOURCE_TOPIC
from infra.envelope import CE_AGGREGATEVERSION, CE_ID, headers_dict
from infra.errors import FatalError
from infra.kafka import read_to_end, topic_names, topic_partitions
from infra.settings import KafkaSettings
from outbox_relay.checkpoint import Checkpoint, CheckpointDecodeError, decode_checkpoint
from outbox_relay.scope import CollectionScope

log = structlog.get_logger(__name__)

DocKey = tuple[str, str]


def _last_checkpoint(settings: KafkaSettings, topic: str, relay: str) -> Checkpoint | None:
    last: bytes | None = None
    key = relay.encode()
    # From the beginning: compaction keeps the latest record per key.
    parts = topic_partitions(settings, [topic])
    for message in read_to_end(settings, parts, purpose="relay-checkpoint-reader"):
        if message.key == key and message.value is not None:
            last = message.value
    if last is None:
        return None
    try:
        return decode_checkpoint(last)
    except CheckpointDecodeError as e:
        raise FatalError(f"unreadable checkpoint for relay {relay!r} in {topic}: {e}") from e


def read_checkpoint_blocking(settings: KafkaSettings, relay: str) -> Checkpoint | None:
    """The last committed checkpoint of `relay`, None if it never committed one.

    Its own topic first; a relay that has none there yet (upgraded from the shared
    topic) takes its last checkpoint from the legacy `<ns>.relay.checkpoints` once.
    """
    own = _last_checkpoint(settings, settings.relay_checkpoint_topic(relay), relay)
    if own is not None:
        return own
    legacy = _last_checkpoint(settings, settings.checkpoint_topic, relay)
    if legacy is not None:
        log.info("checkpoint_read_from_legacy_topic", relay=relay, topic=settings.checkpoint_topic)
    return legacy


async def read_checkpoint(settings: KafkaSettings, relay: str) -> Checkpoint | None:
    return await asyncio.to_thread(read_checkpoint_blocking, settings, relay)


def collection_of(settings: KafkaSettings, topic: str) -> str | None:
    """The collection of an event topic's name, None for any other topic."""
    prefix = settings.event_topic("")
    return topic[len(prefix) :] if topic.startswith(prefix) and len(topic) > len(prefix) else None


def event_topics_blocking(settings: KafkaSettings, scope: CollectionScope) -> list[str]:
    """Event topics of the collections in `scope` (existing ones, for a negated scope)."""
    if not scope.negated:
        return sorted(settings.event_topic(c) for c in scope.names)
    pattern = re.compile(settings.event_topic_pattern)
    return sorted(
        t
        for t in topic_names(settings)
        if pattern.match(t) and scope.contains(collection_of(settings, t) or "")
    )


@dataclass
class Published:
    """What Kafka holds of some collections: event ids and each document's highest version.

    Dead letters of those collections count too: a record the relay dead-lettered was
    published, to the DLQ, and must not be dead-lettered again by a recovery.
    """

    ids: set[str] = field(default_factory=set)
    versions: dict[DocKey, int] = field(default_factory=dict)

    def add(self, collection: str, key: bytes | None, headers: dict[str, str]) -> None:
        event_id = headers.get(CE_ID)
        if not event_id:
            return
        self.ids.add(event_id)
        version = headers.get(CE_AGGREGATEVERSION, "")
        if key is not None and version.isdigit():
            doc = (collection, key.decode(errors="replace"))
            self.versions[doc] = max(self.versions.get(doc, 0), int(version))


def read_published_blocking(
    settings: KafkaSettings, scope: CollectionScope, since: datetime | None
) -> Published:
    """Every event of `scope`'s topics and the DLQ with a timestamp at or after `since`."""
    topics = event_topics_blocking(settings, scope)
    published = Published()
    parts = topic_partitions(settings, [*topics, settings.dlq_topic])
    for message in read_to_end(settings, parts, purpose="relay-event-reader", since=since):
        headers = headers_dict(message.headers)
        source = message.topic
        if source == settings.dlq_topic:
            source = headers.get(DLQ_SOURCE_TOPIC, "")
        collection = collection_of(settings, source)
        if collection is not None and scope.contains(collection):
            published.add(collection, message.key, headers)
    return published


async def read_published(
    settings: KafkaSettings, scope: CollectionScope, since: datetime | None
) -> Published:
    return await asyncio.to_thread(read_published_blocking, settings, scope, since)
