"""Checkpoint encoding, the Kafka form of an outbox record, and the recovery rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bson.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from infra.dead_letter import DeadLetter
from infra.envelope import EnvelopeEncoder, EventType, KafkaMessage, OutboxRecord
from infra.settings import KafkaSettings, RelaySettings, Settings
from outbox_relay.change_stream import is_history_lost, outbox_pipeline
from outbox_relay.checkpoint import (
    Checkpoint,
    CheckpointDecodeError,
    CheckpointMode,
    decode_checkpoint,
    encode_checkpoint,
)
from outbox_relay.publisher import dead_letter_for, transactional_id
from outbox_relay.recovery import (
    SkipWindow,
    duplicate_possible,
    scan_filter,
    scan_since,
)
from outbox_relay.relay import message_for

NOW = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)

tokens = st.one_of(
    st.none(),
    st.fixed_dictionaries({"_data": st.text(alphabet="0123456789abcdef", min_size=2)}),
)
timestamps = st.one_of(
    st.none(),
    st.builds(Timestamp, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
)
datetimes = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)


@given(
    relay=st.text(min_size=1, max_size=40),
    mode=st.sampled_from(CheckpointMode),
    token=tokens,
    cluster_time=timestamps,
    recover_from=datetimes,
    last_event_id=st.one_of(st.none(), st.uuids().map(str)),
    events_total=st.integers(0, 2**53),
    written_at=datetimes,
)
def test_a_checkpoint_round_trips_through_its_kafka_encoding(
    relay: str,
    mode: CheckpointMode,
    token: dict[str, str] | None,
    cluster_time: Timestamp | None,
    recover_from: datetime | None,
    last_event_id: str | None,
    events_total: int,
    written_at: datetime | None,
) -> None:
    """Whatever the relay commits, a restarted relay reads back unchanged."""
    cp = Checkpoint(
        relay=relay,
        mode=mode,
        resume_token=token,
        cluster_time=cluster_time,
        recover_from=recover_from,
        last_event_id=last_event_id,
        events_total=events_total,
        written_at=written_at,
    )
    assert decode_checkpoint(encode_checkpoint(cp)) == cp


def test_the_checkpoint_key_is_the_relay_name_so_compaction_keeps_the_latest() -> None:
    assert Checkpoint.initial("relay-a").kafka_key() == b"relay-a"


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b'{"format": 99}', b'{"format": 1, "relay": "r"}']
)
def test_an_unreadable_checkpoint_is_refused_not_guessed(raw: bytes) -> None:
    with pytest.raises(CheckpointDecodeError):
        decode_checkpoint(raw)


def test_a_stream_batch_advances_the_checkpoint_and_counts_its_events() -> None:
    start = Checkpoint.initial("r")
    assert start.mode is CheckpointMode.RECOVERING
    assert start.recover_from is None  # first start: every retained record
    cp = start.advanced(
        resume_token={"_data": "ab"},
        cluster_time=Timestamp(100, 2),
        last_event_id="e1",
        published=5,
        now=NOW,
    )
    assert cp.mode is CheckpointMode.STREAM
    assert (cp.resume_token, cp.cluster_time, cp.events_total) == (
        {"_data": "ab"},
        Timestamp(100, 2),
        5,
    )
    assert cp.wall_time == datetime(1970, 1, 1, 0, 1, 40, tzinfo=UTC)
    heartbeat = cp.advanced(
        resume_token={"_data": "ac"},
        cluster_time=Timestamp(101, 1),
        last_event_id=None,
        published=0,
        now=NOW,
    )
    assert heartbeat.last_event_id == "e1"  # a heartbeat keeps the last event id
    assert heartbeat.events_total == 5


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
    assert outbox_pipeline([]) == [{"$match": {"operationType": "insert"}}]
    assert outbox_pipeline(["books"]) == [
        {"$match": {"operationType": "insert", "fullDocument.collection": {"$in": ["books"]}}}
    ]


def test_history_loss_is_recognised_by_code_not_by_label() -> None:
    from pymongo.errors import OperationFailure  # noqa: PLC0415

    assert is_history_lost(OperationFailure("lost", code=286))
    assert is_history_lost(
        OperationFailure("cannot resume stream; the resume token was not found", code=280)
    )
    assert not is_history_lost(OperationFailure("other fatal", code=280))
    assert not is_history_lost(OperationFailure("interrupted", code=11601))


def test_recovery_scans_from_the_checkpoint_minus_the_margin() -> None:
    margin = timedelta(seconds=RelaySettings().recovery_margin_seconds)
    assert scan_since(None, margin) is None
    assert scan_since(NOW, margin) == NOW - margin
    assert timedelta(seconds=60) <= margin  # MongoDB's transaction lifetime limit
    assert scan_filter(NOW, ["books"]) == {"time": {"$gte": NOW}, "collection": {"$in": ["books"]}}
    assert scan_filter(None, []) == {}


def test_only_records_older_than_the_checkpoint_are_counted_as_possible_duplicates() -> None:
    assert duplicate_possible(NOW - timedelta(seconds=1), NOW)
    assert not duplicate_possible(NOW, NOW)
    assert not duplicate_possible(NOW - timedelta(days=1), None)  # first start: none published


@given(
    until=st.integers(10, 1000),
    change_at=st.integers(0, 2000),
    scanned=st.booleans(),
)
def test_the_stream_skips_a_scanned_event_only_inside_the_scan_window(
    until: int, change_at: int, scanned: bool
) -> None:
    """After the scan ended, no change can have been scanned: nothing is skipped then."""
    window = SkipWindow({"e1"} if scanned else set(), until=Timestamp(until, 1))
    skipped = window.covers(Timestamp(change_at, 1), "e1")
    assert skipped == (scanned and change_at <= until)
    assert window.passed(Timestamp(change_at, 1)) == (change_at > until)
