"""Checkpoints: their Kafka encoding (both formats) and the position they stand for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from bson.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.checkpoint import (
    Checkpoint,
    CheckpointDecodeError,
    CheckpointMode,
    checkpoint_position,
    decode_checkpoint,
    encode_checkpoint,
)

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
    collections=st.one_of(st.just(()), st.lists(st.text(min_size=1), max_size=4).map(tuple)),
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
    collections: tuple[str, ...],
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
        collections=collections,
    )
    assert decode_checkpoint(encode_checkpoint(cp)) == cp


def test_the_checkpoint_key_is_the_relay_name_so_compaction_keeps_the_latest() -> None:
    assert Checkpoint.initial("relay-a").kafka_key() == b"relay-a"


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b'{"format": 99}', b'{"format": 2, "relay": "r"}']
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


def test_a_format_1_checkpoint_from_the_shared_topic_is_read_with_its_list_unknown() -> None:
    """What relays wrote before the per-name topics is still understood on upgrade."""
    body = orjson.loads(encode_checkpoint(Checkpoint.initial("r")))
    del body["collections"]
    body["format"] = 1
    cp = decode_checkpoint(orjson.dumps(body))
    assert cp.relay == "r"
    assert cp.collections is None


def test_the_position_of_a_stream_checkpoint_is_its_record_or_oplog_time_whichever_is_later() -> (
    None
):
    stream = Checkpoint(relay="r", mode=CheckpointMode.STREAM, cluster_time=Timestamp(100, 1))
    oplog = datetime(1970, 1, 1, 0, 1, 40, tzinfo=UTC)
    assert checkpoint_position(stream, None) == oplog
    assert checkpoint_position(stream, oplog + timedelta(seconds=1)) == oplog + timedelta(seconds=1)
    assert checkpoint_position(stream, oplog - timedelta(seconds=1)) == oplog


def test_the_position_of_a_recovering_checkpoint_is_where_its_recovery_starts() -> None:
    """A recovery publishes in document order: its last record's time is no position."""
    recovering = Checkpoint.initial("r").recovery_from(NOW, collections=())
    assert checkpoint_position(recovering, NOW + timedelta(hours=1)) == NOW
    assert checkpoint_position(Checkpoint.initial("r"), NOW) is None
