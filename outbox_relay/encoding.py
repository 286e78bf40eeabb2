"""Stored outbox record → Kafka message, on the relay's hot path.

The message is exactly `OutboxRecord.from_mongo(raw)`'s `kafka_key()`, `kafka_value()`
and `kafka_headers()` (a unit test holds the two equal), built without the intermediate
record: per collection the topic and `ce_source`, per event type `ce_type`, and the
constant headers are computed once, so per event only what varies is encoded. A record
that cannot be encoded (missing field, wrong type, payload that is not JSON) becomes a
dead letter instead of stopping the relay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from bson import json_util

from infra.envelope import (
    CE_AGGREGATEVERSION,
    CE_ID,
    CE_SOURCE,
    CE_SPECVERSION,
    CE_SUBJECT,
    CE_TIME,
    CE_TRACEPARENT,
    CE_TYPE,
    CONTENT_TYPE,
    DEBEZIUM_ID,
    SOURCE_PREFIX,
    EventType,
    format_time,
)
from infra.settings import KafkaSettings
from outbox_relay.publisher import OutgoingMessage, dead_letter_for

_SPECVERSION = (CE_SPECVERSION, b"1.0")
_CONTENT_TYPE = (CONTENT_TYPE, b"application/json")
_CE_TYPES = {t.value: (CE_TYPE, t.ce_type.encode()) for t in EventType}


class MalformedRecordError(ValueError):
    """An outbox record off the contract (wrong or missing field)."""


class MessageEncoder:
    """Builds the relay's Kafka messages; caches what depends on the collection only."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._per_collection: dict[str, tuple[str, tuple[str, bytes]]] = {}

    def _collection(self, collection: object) -> tuple[str, tuple[str, bytes]]:
        cached = self._per_collection.get(collection) if isinstance(collection, str) else None
        if cached is None:
            if not isinstance(collection, str) or not collection:
                raise MalformedRecordError(f"collection must be a string, got {collection!r}")
            cached = (
                self._kafka.event_topic(collection),
                (CE_SOURCE, (SOURCE_PREFIX + collection).encode()),
            )
            self._per_collection[collection] = cached
        return cached

    def encode(self, raw: dict[str, Any]) -> OutgoingMessage:
        """The Kafka message for one stored outbox record (a dead letter if malformed)."""
        try:
            return self._encode(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return self._malformed(raw, e)

    def _encode(self, raw: dict[str, Any]) -> OutgoingMessage:
        collection = raw["collection"]
        topic, source = self._collection(collection)
        event_id = str(raw["_id"])
        document_id = raw["document_id"]
        if not isinstance(document_id, str):
            raise MalformedRecordError(f"document_id must be a string, got {document_id!r}")
        version = int(raw["version"])
        kind = raw["type"]
        ce_type = _CE_TYPES[kind]  # KeyError: unknown event type
        time: datetime = raw["time"]
        if time.tzinfo is None:  # PyMongo returns naive UTC unless tz_aware
            time = time.replace(tzinfo=UTC)
        payload = raw.get("payload")
        traceparent = raw.get("traceparent")
        id_bytes = event_id.encode()
        key = document_id.encode()
        headers = [
            _SPECVERSION,
            (CE_ID, id_bytes),
            source,
            ce_type,
            (CE_SUBJECT, key),
            (CE_TIME, format_time(time).encode()),
            (CE_AGGREGATEVERSION, str(version).encode()),
            _CONTENT_TYPE,
            (DEBEZIUM_ID, id_bytes),
        ]
        if traceparent:
            headers.append((CE_TRACEPARENT, traceparent.encode()))
        return OutgoingMessage(
            topic=topic,
            key=key,
            value=None if payload is None else orjson.dumps(payload),
            headers=headers,
            event_id=event_id,
            collection=collection,
        )

    def _malformed(self, raw: dict[str, Any], error: Exception) -> OutgoingMessage:
        kafka = self._kafka
        collection = raw.get("collection")
        source = kafka.event_topic(collection) if isinstance(collection, str) else ""
        bad = OutgoingMessage(
            topic=source,
            key=str(raw.get("document_id", "")).encode() or None,
            value=json_util.dumps(raw).encode(),
            headers=[],
            event_id=str(raw.get("_id", "")),
            collection=collection if isinstance(collection, str) else "",
        )
        return dead_letter_for(bad, f"malformed outbox record: {error!r}", kafka.dlq_topic)


def record_time(raw: dict[str, Any]) -> datetime | None:
    """The outbox `time` of a stored record, timezone-aware; None if it has none."""
    time = raw.get("time")
    if not isinstance(time, datetime):
        return None
    return time if time.tzinfo else time.replace(tzinfo=UTC)
