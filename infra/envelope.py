"""The outbox record and its Kafka form: the public contract between the stages.

An `OutboxRecord` is written by the API in the same MongoDB transaction as the
document, published by the relay as a CloudEvents 1.0 message (Kafka protocol
binding, binary mode) and read back by the indexer and the operator tools.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

CE_SPECVERSION = "ce_specversion"
CE_ID = "ce_id"
CE_SOURCE = "ce_source"
CE_TYPE = "ce_type"
CE_SUBJECT = "ce_subject"
CE_TIME = "ce_time"
CE_AGGREGATEVERSION = "ce_aggregateversion"
CE_TRACEPARENT = "ce_traceparent"
CE_REPLAYED = "ce_replayed"  # extension set by `outbox replay` / reconcile / DLQ redrive
CONTENT_TYPE = "content-type"
DEBEZIUM_ID = "id"  # Debezium's outbox event router header: existing consumers de-duplicate on it

CE_TYPE_PREFIX = "io.outbox.document."
SOURCE_PREFIX = "/outbox/"


class EventType(StrEnum):
    """What a write did to its document."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"

    @property
    def ce_type(self) -> str:
        return CE_TYPE_PREFIX + self.value


class EnvelopeError(ValueError):
    """A Kafka message that does not follow the contract (a poison event)."""


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    """Millisecond precision: what MongoDB stores, so a record round-trips unchanged."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One change to one document. `payload` is the document after the write, None for a delete."""

    event_id: str
    collection: str
    document_id: str
    version: int
    type: EventType
    payload: dict[str, Any] | None
    time: datetime
    traceparent: str | None = None
    replayed: bool = field(default=False, compare=False)

    # --- MongoDB -------------------------------------------------------------------------

    def to_mongo(self) -> dict[str, Any]:
        """The stored form in the `outbox` collection; `_id` is the event id."""
        return {
            "_id": self.event_id,
            "collection": self.collection,
            "document_id": self.document_id,
            "version": self.version,
            "type": self.type.value,
            "payload": self.payload,
            "time": self.time,
            "traceparent": self.traceparent,
        }

    @classmethod
    def from_mongo(cls, raw: dict[str, Any]) -> OutboxRecord:
        time = raw["time"]
        if time.tzinfo is None:  # PyMongo returns naive UTC unless tz_aware
            time = time.replace(tzinfo=UTC)
        return cls(
            event_id=str(raw["_id"]),
            collection=raw["collection"],
            document_id=raw["document_id"],
            version=int(raw["version"]),
            type=EventType(raw["type"]),
            payload=raw.get("payload"),
            time=time,
            traceparent=raw.get("traceparent"),
        )

    # --- Kafka ---------------------------------------------------------------------------

    def kafka_key(self) -> bytes:
        """The document id: a document's events share a partition, hence commit order."""
        return self.document_id.encode()

    def kafka_value(self) -> bytes | None:
        """The document JSON; None (a Kafka tombstone) for a delete."""
        return None if self.payload is None else orjson.dumps(self.payload)

    def kafka_headers(self, *, replayed: bool | None = None) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode headers plus Debezium's `id`."""
        headers = [
            (CE_SPECVERSION, b"1.0"),
            (CE_ID, self.event_id.encode()),
            (CE_SOURCE, (SOURCE_PREFIX + self.collection).encode()),
            (CE_TYPE, self.type.ce_type.encode()),
            (CE_SUBJECT, self.document_id.encode()),
            (CE_TIME, format_time(self.time).encode()),
            (CE_AGGREGATEVERSION, str(self.version).encode()),
            (CONTENT_TYPE, b"application/json"),
            (DEBEZIUM_ID, self.event_id.encode()),
        ]
        if self.traceparent:
            headers.append((CE_TRACEPARENT, self.traceparent.encode()))
        if self.replayed if replayed is None else replayed:
            headers.append((CE_REPLAYED, b"true"))
        return headers

    @classmethod
    def from_kafka(
        cls,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
    ) -> OutboxRecord:
        """Decode a message; raises `EnvelopeError` for anything off-contract."""
        h = headers_dict(headers)
        try:
            event_id = _required(h, CE_ID)
            source = _required(h, CE_SOURCE)
            ce_type = _required(h, CE_TYPE)
            subject = _required(h, CE_SUBJECT)
            version = int(_required(h, CE_AGGREGATEVERSION))
            time = parse_time(_required(h, CE_TIME))
        except ValueError as e:
            raise EnvelopeError(f"bad CloudEvents headers: {e}") from e
        if not source.startswith(SOURCE_PREFIX) or not ce_type.startswith(CE_TYPE_PREFIX):
            raise EnvelopeError(f"unexpected ce_source/ce_type: {source!r}, {ce_type!r}")
        try:
            event_type = EventType(ce_type.removeprefix(CE_TYPE_PREFIX))
        except ValueError as e:
            raise EnvelopeError(f"unknown ce_type {ce_type!r}") from e
        if version < 1:
            raise EnvelopeError(f"ce_aggregateversion must be >= 1, got {version}")
        if key is not None and key.decode(errors="replace") != subject:
            raise EnvelopeError("message key and ce_subject differ")
        payload: dict[str, Any] | None = None
        if event_type is EventType.DELETED:
            if value is not None:
                raise EnvelopeError("a delete carries no value")
        else:
            if value is None:
                raise EnvelopeError(f"a {event_type.value} event needs a JSON object value")
            try:
                decoded = orjson.loads(value)
            except orjson.JSONDecodeError as e:
                raise EnvelopeError(f"value is not JSON: {e}") from e
            if not isinstance(decoded, dict):
                raise EnvelopeError("value is not a JSON object")
            payload = decoded
        return cls(
            event_id=event_id,
            collection=source.removeprefix(SOURCE_PREFIX),
            document_id=subject,
            version=version,
            type=event_type,
            payload=payload,
            time=time,
            traceparent=h.get(CE_TRACEPARENT),
            replayed=h.get(CE_REPLAYED) == "true",
        )


def headers_dict(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers as str → str (last one wins), undecodable bytes replaced."""
    return {k: (v or b"").decode(errors="replace") for k, v in headers or []}


def _required(headers: dict[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise ValueError(f"missing header {name}")
    return value


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as CloudEvents' `time` wants."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"time without a zone: {s!r}")
    return t.astimezone(UTC)
