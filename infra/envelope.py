"""The outbox record and its Kafka form: the public contract between the stages.

An `OutboxRecord` is written by the API in the same MongoDB transaction as the
document, published by the relay as a CloudEvents 1.0 message (Kafka protocol
binding, binary mode) and read back by the indexer and the operator tools.

This module is the one codec of that contract: `OutboxRecord.to_kafka` and the relay's
hot-path `EnvelopeEncoder` build headers through the same `event_headers`, and
`OutboxRecord.from_kafka` is their inverse.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable

    from infra.dead_letter import DeadLetter

CE_SPECVERSION = "ce_specversion"
CE_ID = "ce_id"
CE_SOURCE = "ce_source"
CE_TYPE = "ce_type"
CE_SUBJECT = "ce_subject"
CE_TIME = "ce_time"
CE_AGGREGATEVERSION = "ce_aggregateversion"
CE_TRACEPARENT = "ce_traceparent"
CE_REPLAYED = "ce_replayed"  # extension set by `outbox replay` / reconcile / DLQ redrive
# CloudEvents' authcontext extension: who made the write (the authenticated user's id).
CE_AUTHTYPE = "ce_authtype"
CE_AUTHID = "ce_authid"
AUTHTYPE_USER = "app_user"
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


class MalformedRecordError(ValueError):
    """A stored outbox record off the contract (wrong or missing field)."""


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
    auth_id: str | None = None  # the authenticated subject that made the write
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
            "auth_id": self.auth_id,
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
            auth_id=raw.get("auth_id"),
        )

    # --- Kafka ---------------------------------------------------------------------------

    def kafka_key(self) -> bytes:
        """The document id: a document's events share a partition, hence commit order."""
        return self.document_id.encode()

    def kafka_value(self) -> bytes | None:
        """The document JSON; None (a Kafka tombstone) for a delete."""
        return None if self.payload is None else orjson.dumps(self.payload)

    def kafka_headers(self, *, replayed: bool | None = None) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode headers plus Debezium's `id` (see `event_headers`)."""
        return event_headers(
            event_id=self.event_id.encode(),
            source=source_header(self.collection),
            ce_type=_CE_TYPE_HEADERS[self.type],
            subject=self.kafka_key(),
            time=self.time,
            version=self.version,
            traceparent=self.traceparent,
            auth_id=self.auth_id,
            replayed=self.replayed if replayed is None else replayed,
        )

    def to_kafka(self, topic: str, *, replayed: bool | None = None) -> KafkaMessage:
        """This record as the message to produce on `topic`."""
        return KafkaMessage(
            topic=topic,
            key=self.kafka_key(),
            value=self.kafka_value(),
            headers=self.kafka_headers(replayed=replayed),
            event_id=self.event_id,
            collection=self.collection,
        )

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
            auth_id=h.get(CE_AUTHID),
            replayed=h.get(CE_REPLAYED) == "true",
        )


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """One message to produce: an event, or the dead letter standing in for one."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    event_id: str
    collection: str = ""  # the outbox record's collection (the metrics label)
    dead_letter: DeadLetter | None = None


_SPECVERSION_HEADER = (CE_SPECVERSION, b"1.0")
_CONTENT_TYPE_HEADER = (CONTENT_TYPE, b"application/json")
_AUTHTYPE_HEADER = (CE_AUTHTYPE, AUTHTYPE_USER.encode())
_REPLAYED_HEADER = (CE_REPLAYED, b"true")
_CE_TYPE_HEADERS = {t: (CE_TYPE, t.ce_type.encode()) for t in EventType}
_CE_TYPE_HEADERS_BY_NAME = {t.value: h for t, h in _CE_TYPE_HEADERS.items()}


def source_header(collection: str) -> tuple[str, bytes]:
    return (CE_SOURCE, (SOURCE_PREFIX + collection).encode())


def event_headers(
    *,
    event_id: bytes,
    source: tuple[str, bytes],
    ce_type: tuple[str, bytes],
    subject: bytes,
    time: datetime,
    version: int,
    traceparent: str | None,
    auth_id: str | None,
    replayed: bool = False,
) -> list[tuple[str, bytes]]:
    """The headers of one event: the only place their names, order and encoding are decided."""
    headers = [
        _SPECVERSION_HEADER,
        (CE_ID, event_id),
        source,
        ce_type,
        (CE_SUBJECT, subject),
        (CE_TIME, format_time(time).encode()),
        (CE_AGGREGATEVERSION, str(version).encode()),
        _CONTENT_TYPE_HEADER,
        (DEBEZIUM_ID, event_id),
    ]
    if traceparent:
        headers.append((CE_TRACEPARENT, traceparent.encode()))
    if auth_id:
        headers += [_AUTHTYPE_HEADER, (CE_AUTHID, auth_id.encode())]
    if replayed:
        headers.append(_REPLAYED_HEADER)
    return headers


class EnvelopeEncoder:
    """Stored outbox record → Kafka message, without building an `OutboxRecord` first.

    The relay's hot path: what depends on the collection only (topic, `ce_source`) is
    computed once per collection. The result equals `OutboxRecord.from_mongo(raw)
    .to_kafka(topic_for(collection))` (a property test holds the two equal).
    """

    def __init__(self, topic_for: Callable[[str], str]) -> None:
        self._topic_for = topic_for
        self._per_collection: dict[str, tuple[str, tuple[str, bytes]]] = {}

    def _collection(self, collection: object) -> tuple[str, tuple[str, bytes]]:
        cached = self._per_collection.get(collection) if isinstance(collection, str) else None
        if cached is None:
            if not isinstance(collection, str) or not collection:
                raise MalformedRecordError(f"collection must be a string, got {collection!r}")
            cached = (self._topic_for(collection), source_header(collection))
            self._per_collection[collection] = cached
        return cached

    def encode(self, raw: dict[str, Any]) -> KafkaMessage:
        """The message for one stored record; `MalformedRecordError` if it is off-contract."""
        try:
            return self._encode(raw)
        except MalformedRecordError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MalformedRecordError(repr(e)) from e

    def _encode(self, raw: dict[str, Any]) -> KafkaMessage:
        collection = raw["collection"]
        topic, source = self._collection(collection)
        event_id = str(raw["_id"])
        document_id = raw["document_id"]
        if not isinstance(document_id, str):
            raise MalformedRecordError(f"document_id must be a string, got {document_id!r}")
        time: datetime = raw["time"]
        if time.tzinfo is None:  # PyMongo returns naive UTC unless tz_aware
            time = time.replace(tzinfo=UTC)
        payload = raw.get("payload")
        id_bytes = event_id.encode()
        key = document_id.encode()
        return KafkaMessage(
            topic=topic,
            key=key,
            value=None if payload is None else orjson.dumps(payload),
            headers=event_headers(
                event_id=id_bytes,
                source=source,
                ce_type=_CE_TYPE_HEADERS_BY_NAME[raw["type"]],  # KeyError: unknown type
                subject=key,
                time=time,
                version=int(raw["version"]),
                traceparent=raw.get("traceparent"),
                auth_id=raw.get("auth_id"),
            ),
            event_id=event_id,
            collection=collection,
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
