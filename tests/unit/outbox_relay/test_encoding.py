"""The Kafka form of an outbox record, dead letters, the stream filter, history loss."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.dead_letter import DeadLetter
from infra.envelope import EnvelopeEncoder, EventType, KafkaMessage, OutboxRecord
from infra.settings import KafkaSettings, RelaySettings, Settings
from outbox_relay.change_stream import is_history_lost, outbox_pipeline
from outbox_relay.publisher import transactional_id
from outbox_relay.refusal import dead_letter_for
from outbox_relay.relay import message_for
from outbox_relay.scope import CollectionScope

NOW = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)


def record(kind: EventType = EventType.UPDATED, **kw: object) -> OutboxRecord:
    values: dict[str, object] = {
        "event_id": "0b8e0c1e-7c1e-4c55-9f0e-0c0e1e2e3e4e",
        "collection": "books",
        "document_id": "b1",
        "version": 3,
        "type": kind,
        "payload": None if kind is EventType.DELETED else {"title": "Dune", "n": 1},
        "time": NOW,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    values.update(kw)
    return OutboxRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(EventType))
def test_a_stored_record_becomes_exactly_the_contract_message(kind: EventType) -> None:
    """Topic per collection, key = document id, the envelope's value and headers, untouched."""
    settings = Settings(kafka=KafkaSettings(namespace="ns"))
    rec = record(kind)
    message = message_for(
        rec.to_mongo(), EnvelopeEncoder(settings.kafka.event_topic), settings.kafka
    )
    assert message.topic == "ns.event.books"
    assert message.key == b"b1"
    assert message.value == rec.kafka_value()
    assert (message.value is None) == (kind is EventType.DELETED)
    assert message.headers == rec.kafka_headers()
    headers = dict(message.headers)
    assert headers["ce_id"] == headers["id"] == rec.event_id.encode()
    assert message.dead_letter is None


def test_a_malformed_outbox_record_becomes_a_dead_letter_not_a_crash() -> None:
    settings = Settings(kafka=KafkaSettings(namespace="ns"))
    raw = record().to_mongo()
    raw["type"] = "exploded"
    message = message_for(raw, EnvelopeEncoder(settings.kafka.event_topic), settings.kafka)
    assert message.topic == "ns.dlq"
    assert message.dead_letter is not None
    assert message.dead_letter.source_topic == "ns.event.books"
    assert "malformed" in message.dead_letter.error
    assert message.value is not None  # its stored form, for the operator


def test_a_malformed_record_too_big_for_kafka_is_dead_lettered_without_its_stored_form() -> None:
    """Kafka would refuse a dead letter carrying it: the outbox keeps the body instead."""
    kafka = KafkaSettings(namespace="ns", message_max_bytes=16384)
    raw = record(payload={"blob": "x" * 20000}).to_mongo()
    del raw["type"]
    message = message_for(raw, EnvelopeEncoder(kafka.event_topic), kafka)
    assert message.dead_letter is not None
    assert message.value is None


def test_a_dead_letter_for_an_oversized_event_keeps_its_headers_but_not_its_value() -> None:
    rec = record()
    event = KafkaMessage(
        topic="ns.event.books",
        key=rec.kafka_key(),
        value=b"x" * 10,
        headers=rec.kafka_headers(),
        event_id=rec.event_id,
    )
    letter = dead_letter_for(event, "MSG_SIZE_TOO_LARGE: too big", "ns.dlq")
    assert letter.topic == "ns.dlq"
    assert letter.value is None  # what was too big cannot ride along
    decoded = DeadLetter.from_kafka(key=letter.key, value=letter.value, headers=letter.headers)  # type: ignore[arg-type]
    assert decoded.stage == "relay"
    assert decoded.source_topic == "ns.event.books"
    assert decoded.error.startswith("MSG_SIZE_TOO_LARGE")
    assert decoded.original_headers == rec.kafka_headers()


def test_the_transactional_id_depends_on_the_relay_name_only() -> None:
    """A standby or a restart shares it (and so fences the old holder); other names do not."""
    a1 = Settings(relay=RelaySettings(name="a", batch_max_events=10))
    a2 = Settings(relay=RelaySettings(name="a", collections=["books"]))
    b = Settings(relay=RelaySettings(name="b"))
    assert transactional_id(a1) == transactional_id(a2) != transactional_id(b)


def test_the_stream_filter_keeps_inserts_and_this_relays_collections() -> None:
    assert outbox_pipeline(CollectionScope.of([])) == [{"$match": {"operationType": "insert"}}]
    assert outbox_pipeline(CollectionScope.of(["books"])) == [
        {"$match": {"operationType": "insert", "fullDocument.collection": {"$in": ["books"]}}}
    ]


def test_history_loss_is_recognised_by_code_not_by_label() -> None:
    from pymongo.errors import OperationFailure  # noqa: PLC0415

    assert is_history_lost(OperationFailure("lost", code=286))
    assert is_history_lost(
        OperationFailure("cannot resume stream; the resume token was not found", code=280)
    )
    assert not is_history_lost(OperationFailure("other fatal", code=280))
    assert is_history_lost(OperationFailure("resumeAfter an invalidate token", code=260))
    assert is_history_lost(
        OperationFailure(
            "Resume token namespace does not match the change-stream watch scope", code=13
        )
    )
    assert not is_history_lost(OperationFailure("not authorized on outbox", code=13))
    assert not is_history_lost(OperationFailure("interrupted", code=11601))
