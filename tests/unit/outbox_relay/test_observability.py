"""Readiness, metrics and the recovery skip window of the relay, without servers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bson.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect

from infra.envelope import EnvelopeEncoder, EventType, KafkaMessage, OutboxRecord
from infra.errors import RetriableError
from infra.health import ProgressMonitor
from infra.settings import KafkaSettings
from outbox_relay.backlog import EPOCH, backlog_query
from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from outbox_relay.progress import RelayState
from outbox_relay.publisher import LeaseCheckFailedError, TransactionAbortedError
from outbox_relay.recovery import SkipWindow, skip_scanned
from outbox_relay.relay import failed_dependency, message_for

NOW = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)


def change(event_id: str, at: int) -> dict[str, Any]:
    return {
        "_id": {"_data": event_id},
        "clusterTime": Timestamp(at, 1),
        "fullDocument": {"_id": event_id},
    }


# --- the recovery skip window ---------------------------------------------------------------


def test_a_batch_straddling_the_end_of_the_scan_still_skips_the_scanned_ids_it_starts_with() -> (
    None
):
    """Scanned ids before the scan's end are dropped, later changes kept, then the window ends."""
    window = SkipWindow({"scanned-1", "scanned-2", "scanned-3"}, until=Timestamp(100, 1))
    batch = [
        change("scanned-1", 99),
        change("fresh-1", 99),  # committed during the scan but not seen by it
        change("scanned-2", 100),
        change("fresh-2", 101),
        change("fresh-3", 102),
    ]
    kept, next_window = skip_scanned(batch, Timestamp(102, 1), window)
    assert [c["fullDocument"]["_id"] for c in kept] == ["fresh-1", "fresh-2", "fresh-3"]
    assert next_window is None  # past the scan: normal checkpoints from here


def test_a_batch_inside_the_scan_window_keeps_the_window_for_the_next_batch() -> None:
    window = SkipWindow({"scanned-1"}, until=Timestamp(100, 1))
    kept, next_window = skip_scanned(
        [change("scanned-1", 98), change("fresh-1", 99)], Timestamp(99, 1), window
    )
    assert [c["fullDocument"]["_id"] for c in kept] == ["fresh-1"]
    assert next_window is window


@given(
    until=st.integers(10, 50),
    times=st.lists(st.integers(0, 60), min_size=1, max_size=30).map(sorted),
    scanned_mask=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_no_scanned_id_is_ever_published_again_whatever_the_batch_boundaries(
    until: int, times: list[int], scanned_mask: list[bool]
) -> None:
    """Split a stream any way into batches: exactly the ids the scan did not publish pass."""
    changes = [change(f"e{i}", t) for i, t in enumerate(times)]
    # Only a change committed no later than the scan's end can have been scanned.
    scanned = {f"e{i}" for i, t in enumerate(times) if scanned_mask[i] and t <= until}
    for cut in range(len(changes) + 1):
        window: SkipWindow | None = SkipWindow(set(scanned), until=Timestamp(until, 1))
        published: list[str] = []
        for batch in (changes[:cut], changes[cut:]):
            if not batch:
                continue
            kept, window = skip_scanned(batch, batch[-1]["clusterTime"], window)
            published += [c["fullDocument"]["_id"] for c in kept]
        assert published == [
            c["fullDocument"]["_id"] for c in changes if c["fullDocument"]["_id"] not in scanned
        ]


# --- malformed records ----------------------------------------------------------------------


def _message(raw: dict[str, Any]) -> KafkaMessage:
    kafka = KafkaSettings(namespace="ns")
    return message_for(raw, EnvelopeEncoder(kafka.event_topic), kafka)


def test_a_payload_json_cannot_encode_becomes_a_dead_letter() -> None:
    """An integer beyond 64 bits (it cannot come through the API) is dead-lettered, not fatal."""
    record = OutboxRecord(
        "e1", "a", "d", 1, EventType.CREATED, {"n": 2**64}, datetime(2000, 1, 1, tzinfo=UTC)
    )
    message = _message(record.to_mongo())
    assert message.dead_letter is not None
    assert message.topic == "ns.dlq"


def test_a_record_whose_fields_have_the_wrong_type_becomes_a_dead_letter() -> None:
    """A poison record (here a numeric document id) must not stop the relay."""
    raw = OutboxRecord(
        event_id="e1",
        collection="books",
        document_id="b1",
        version=1,
        type=EventType.CREATED,
        payload={"a": 1},
        time=NOW,
    ).to_mongo()
    for field, bad in [("document_id", 7), ("collection", None), ("time", "yesterday")]:
        message = _message({**raw, field: bad})
        assert message.topic == "ns.dlq", field
        assert message.dead_letter is not None


# --- readiness --------------------------------------------------------------------------------


def state_with(stall_after_s: float = 30.0) -> RelayState:
    return RelayState(name="r", monitor=ProgressMonitor(stall_after_s=stall_after_s))


def stream_checkpoint(at: datetime) -> Checkpoint:
    return Checkpoint(
        relay="r",
        mode=CheckpointMode.STREAM,
        cluster_time=Timestamp(int(at.timestamp()), 1),
        written_at=at,
    )


async def test_a_standby_relay_is_ready_even_when_records_wait() -> None:
    state = state_with(stall_after_s=0.01)
    state.became_standby()
    state.monitor.last_progress = time.monotonic() - 60
    assert await state.readiness() == (True, "standby: another relay holds the lease")


async def test_an_active_relay_with_waiting_records_and_no_commit_is_stalled() -> None:
    state = state_with(stall_after_s=5)
    state.became_active()
    state.backlog_measured(12)
    assert (await state.readiness())[0]  # just became active: not stalled yet
    state.monitor.last_progress = time.monotonic() - 6
    ready, detail = await state.readiness()
    assert not ready
    assert detail.startswith("stalled: 12 waiting")
    state.committed(
        stream_checkpoint(NOW),
        published={"books": 12},
        dead_lettered=0,
        last_record_time=NOW,
        heartbeat=False,
        seconds=0.01,
    )
    assert (await state.readiness())[0]


async def test_an_idle_active_relay_is_never_stalled() -> None:
    state = state_with(stall_after_s=5)
    state.became_active()
    state.monitor.last_progress = time.monotonic() - 600
    state.backlog_measured(0)
    assert await state.readiness() == (True, "ok")


async def test_an_unreachable_dependency_turns_readiness_red_until_it_answers_again() -> None:
    state = state_with()
    state.became_active()
    state.dependency_down("mongodb", "connection refused")
    state.dependency_down("kafka", "timed out")
    ready, detail = await state.readiness()
    assert not ready
    assert "mongodb unreachable: connection refused" in detail
    assert "kafka unreachable: timed out" in detail
    state.dependency_up("mongodb")
    assert await state.readiness() == (False, "kafka unreachable: timed out")
    state.dependency_up("kafka")
    assert await state.readiness() == (True, "ok")


def test_failures_point_at_the_right_dependency() -> None:
    assert failed_dependency(AutoReconnect("gone")) == "mongodb"
    assert failed_dependency(TransactionAbortedError("timed out")) == "kafka"
    assert failed_dependency(RetriableError("reading back Kafka timed out")) == "kafka"
    assert (
        failed_dependency(TransactionAbortedError("too big", {"e1": "MSG_SIZE_TOO_LARGE"})) is None
    )
    assert failed_dependency(LeaseCheckFailedError("lease lost")) is None


# --- metrics ----------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_committed_transaction_moves_the_counters_the_lease_and_metrics_report() -> None:
    state = state_with()
    state.became_active()
    assert sample("outbox_relay_active") == 1
    before = {
        "books": sample("outbox_relay_events_published_total", collection="books"),
        "committed": sample("outbox_relay_transactions_total", result="committed"),
        "aborted": sample("outbox_relay_transactions_total", result="aborted"),
        "dlq": sample("outbox_relay_dlq_total"),
        "batches": sample("outbox_relay_batch_size_count"),
    }
    state.committed(
        stream_checkpoint(NOW),
        published={"books": 3, "films": 1},
        dead_lettered=1,
        last_record_time=NOW,
        heartbeat=False,
        seconds=0.02,
    )
    state.aborted()
    assert sample("outbox_relay_events_published_total", collection="books") == before["books"] + 3
    assert sample("outbox_relay_transactions_total", result="committed") == before["committed"] + 1
    assert sample("outbox_relay_transactions_total", result="aborted") == before["aborted"] + 1
    assert sample("outbox_relay_dlq_total") == before["dlq"] + 1
    assert sample("outbox_relay_batch_size_count") == before["batches"] + 1
    assert (state.events_published, state.events_dead_lettered, state.transactions_aborted) == (
        4,
        1,
        1,
    )
    state.became_standby()
    assert sample("outbox_relay_active") == 0


def test_lag_is_the_age_of_the_position_while_records_wait_and_zero_without_backlog() -> None:
    state = state_with()
    state.became_active()
    old = datetime.now(UTC) - timedelta(seconds=90)
    state.committed(
        stream_checkpoint(old - timedelta(seconds=30)),
        published={"books": 1},
        dead_lettered=0,
        last_record_time=old,
        heartbeat=False,
        seconds=0.01,
    )
    assert state.position_time == old  # the later of the record time and the oplog time
    state.backlog_measured(5)
    assert 89 <= sample("outbox_relay_lag_seconds") <= 120
    assert sample("outbox_outbox_backlog") == 5
    state.backlog_measured(0)
    assert sample("outbox_relay_lag_seconds") == 0


def test_the_backlog_counts_records_after_the_position_through_the_time_index() -> None:
    assert backlog_query(NOW, []) == {"time": {"$gt": NOW}}
    assert backlog_query(None, ["books"]) == {
        "time": {"$gt": EPOCH},
        "collection": {"$in": ["books"]},
    }
