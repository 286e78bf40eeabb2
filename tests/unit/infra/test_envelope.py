"""The outbox record's Mongo and Kafka forms: the contract between the stages."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.envelope import (
    CE_AUTHID,
    CE_AUTHTYPE,
    CE_ID,
    CE_REPLAYED,
    CE_TRACEPARENT,
    DEBEZIUM_ID,
    EnvelopeEncoder,
    EnvelopeError,
    EventType,
    MalformedRecordError,
    OutboxRecord,
    headers_dict,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))


@st.composite
def records(draw: st.DrawFn) -> OutboxRecord:
    event_type = draw(st.sampled_from(list(EventType)))
    payload: dict[str, Any] | None = (
        None
        if event_type is EventType.DELETED
        else draw(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=5))
    )
    return OutboxRecord(
        event_id=draw(st.uuids()).hex,
        collection=draw(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)),
        document_id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True)),
        version=draw(st.integers(1, 10**9)),
        type=event_type,
        payload=payload,
        time=draw(times),
        traceparent=draw(st.none() | st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01")),
    )


@given(records())
def test_a_record_survives_the_kafka_round_trip(record: OutboxRecord) -> None:
    decoded = OutboxRecord.from_kafka(
        key=record.kafka_key(), value=record.kafka_value(), headers=list(record.kafka_headers())
    )
    assert decoded == record


@given(records())
def test_a_record_survives_the_mongo_round_trip(record: OutboxRecord) -> None:
    assert OutboxRecord.from_mongo(record.to_mongo()) == record


def test_headers_carry_cloudevents_and_the_debezium_id() -> None:
    record = OutboxRecord(
        event_id="e1",
        collection="books",
        document_id="b1",
        version=3,
        type=EventType.UPDATED,
        payload={"title": "x"},
        time=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )
    h = headers_dict(list(record.kafka_headers()))
    assert h == {
        "ce_specversion": "1.0",
        "ce_id": "e1",
        "ce_source": "/outbox/books",
        "ce_type": "io.outbox.document.updated",
        "ce_subject": "b1",
        "ce_time": "2026-01-02T03:04:05.678Z",
        "ce_aggregateversion": "3",
        "content-type": "application/json",
        "id": "e1",
        "ce_traceparent": record.traceparent,
    }
    assert record.kafka_key() == b"b1"
    assert orjson.loads(record.kafka_value() or b"") == {"title": "x"}


def test_a_delete_is_a_kafka_tombstone() -> None:
    record = OutboxRecord("e", "c", "d", 2, EventType.DELETED, None, datetime.now(UTC))
    assert record.kafka_value() is None


def test_replayed_records_are_marked() -> None:
    record = OutboxRecord("e", "c", "d", 2, EventType.DELETED, None, datetime.now(UTC))
    assert CE_REPLAYED not in headers_dict(list(record.kafka_headers()))
    assert headers_dict(list(record.kafka_headers(replayed=True)))[CE_REPLAYED] == "true"


def _replace(headers: list[tuple[str, bytes | None]], name: str, value: bytes) -> list[Any]:
    return [(n, value if n == name else b) for n, b in headers]


def _good() -> tuple[bytes, bytes | None, list[tuple[str, bytes | None]]]:
    record = OutboxRecord("e", "c", "d", 1, EventType.CREATED, {"a": 1}, datetime.now(UTC))
    return record.kafka_key(), record.kafka_value(), list(record.kafka_headers())


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda k, v, h: (k, v, [x for x in h if x[0] != CE_ID]), "missing ce_id"),
        (lambda k, v, h: (k, b"not json", h), "undecodable value"),
        (lambda k, v, h: (k, b"[1,2]", h), "value not an object"),
        (lambda k, v, h: (k, None, h), "create without value"),
        (lambda k, v, h: (b"other", v, h), "key differs from subject"),
        (
            lambda k, v, h: (
                k,
                v,
                [(n, b"x") if n == "ce_aggregateversion" else (n, b) for n, b in h],
            ),
            "bad version",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                [(n, b"io.other.x") if n == "ce_type" else (n, b) for n, b in h],
            ),
            "foreign type",
        ),
        (lambda k, v, h: (k, v, None), "no headers"),
    ],
)
def test_off_contract_messages_are_refused(mutate: Any, reason: str) -> None:
    key, value, headers = mutate(*_good())
    with pytest.raises(EnvelopeError):
        OutboxRecord.from_kafka(key=key, value=value, headers=headers)


def test_traceparent_is_optional_on_the_wire() -> None:
    key, value, headers = _good()
    decoded = OutboxRecord.from_kafka(key=key, value=value, headers=headers)
    assert decoded.traceparent is None
    assert CE_TRACEPARENT not in headers_dict(headers)
    assert headers_dict(headers)[DEBEZIUM_ID] == headers_dict(headers)[CE_ID]


# --- one codec: the relay's encoder and the indexer's decoder ----------------------------------


@given(records(), st.none() | st.text(min_size=1, max_size=20))
def test_the_relays_encoding_of_a_stored_record_decodes_to_that_record(
    record: OutboxRecord, auth_id: str | None
) -> None:
    """Relay → indexer: what `EnvelopeEncoder` publishes from the outbox collection is what
    `OutboxRecord.from_kafka` reads back, field for field, and equals the record's own form."""
    record = dataclasses.replace(record, auth_id=auth_id)
    message = EnvelopeEncoder(lambda c: f"ns.event.{c}").encode(record.to_mongo())
    assert message.topic == f"ns.event.{record.collection}"
    assert message == record.to_kafka(f"ns.event.{record.collection}")
    assert (
        OutboxRecord.from_kafka(key=message.key, value=message.value, headers=list(message.headers))
        == record
    )


def test_the_authenticated_subject_travels_as_the_cloudevents_authcontext() -> None:
    record = OutboxRecord(
        "e1",
        "books",
        "b1",
        1,
        EventType.CREATED,
        {},
        datetime(2026, 1, 1, tzinfo=UTC),
        auth_id="u7",
    )
    headers = headers_dict(list(record.kafka_headers()))
    assert headers[CE_AUTHID] == "u7"
    assert headers[CE_AUTHTYPE] == "app_user"
    anonymous = dataclasses.replace(record, auth_id=None)
    assert CE_AUTHID not in headers_dict(list(anonymous.kafka_headers()))


@pytest.mark.parametrize(
    ("field", "bad"),
    [("document_id", 7), ("collection", None), ("time", "x"), ("type", "exploded")],
)
def test_the_encoder_refuses_a_stored_record_off_the_contract(field: str, bad: object) -> None:
    raw = OutboxRecord(
        "e1", "books", "b1", 1, EventType.CREATED, {}, datetime(2026, 1, 1, tzinfo=UTC)
    ).to_mongo()
    with pytest.raises(MalformedRecordError):
        EnvelopeEncoder(lambda c: c).encode({**raw, field: bad})
