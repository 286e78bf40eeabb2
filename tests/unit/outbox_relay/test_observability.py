"""Readiness, metrics, the backlog and malformed records of the relay, without servers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bson.timestamp import Timestamp
from pymongo.errors import AutoReconnect

from infra.envelope import EnvelopeEncoder, EventType, KafkaMessage, OutboxRecord
from infra.errors import RetriableError
from infra.health import ProgressMonitor
from infra.settings import KafkaSettings
from outbox_relay.backlog import EPOCH, backlog_query
from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from outbox_relay.metrics import RelayMetrics
from outbox_relay.ports import LeaseCheckFailedError, TransactionAbortedError
from outbox_relay.progress import RelayState
from outbox_relay.relay import HistoryLostError, failed_dependency, message_for
from outbox_relay.scope import ALL, CollectionScope

NOW = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)


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


def sample(state: RelayState, name: str, **labels: str) -> float:
    """A metric of this relay's own registry (no process-wide state between tests)."""
    return state.metrics.registry.get_sample_value(name, labels) or 0.0


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
    assert failed_dependency(HistoryLostError("lost")) is None


# --- metrics ----------------------------------------------------------------------------------


def test_a_committed_transaction_moves_the_counters_the_lease_and_metrics_report() -> None:
    state = state_with()
    state.became_active()
    assert sample(state, "outbox_relay_active") == 1
    state.committed(
        stream_checkpoint(NOW),
        published={"books": 3, "films": 1},
        dead_lettered=1,
        last_record_time=NOW,
        heartbeat=False,
        seconds=0.02,
    )
    state.aborted()
    assert sample(state, "outbox_relay_events_published_total", collection="books") == 3
    assert sample(state, "outbox_relay_transactions_total", result="committed") == 1
    assert sample(state, "outbox_relay_transactions_total", result="aborted") == 1
    assert sample(state, "outbox_relay_dlq_total") == 1
    assert sample(state, "outbox_relay_batch_size_count") == 1
    assert (state.events_published, state.events_dead_lettered, state.transactions_aborted) == (
        4,
        1,
        1,
    )
    state.became_standby()
    assert sample(state, "outbox_relay_active") == 0


def test_two_relays_in_one_process_never_share_a_metric() -> None:
    """Each service has its registry: one relay's counts never show in another's /metrics."""
    a, b = state_with(), RelayState(name="b", metrics=RelayMetrics())
    a.history_lost()
    assert sample(a, "outbox_relay_history_lost_total") == 1
    assert sample(b, "outbox_relay_history_lost_total") == 0


def test_records_no_relay_publishes_turn_readiness_red_and_count_as_backlog() -> None:
    state = state_with()
    state.became_active()
    state.backlog_measured(
        2, unowned=3, unowned_collections=["orphan"], oldest_unpublished_age_s=90.0
    )
    ready, detail = asyncio.run(state.readiness())
    assert not ready
    assert "3 outbox records" in detail
    assert "orphan" in detail
    assert sample(state, "outbox_outbox_backlog") == 5
    assert sample(state, "outbox_outbox_unowned") == 3
    assert sample(state, "outbox_oldest_unpublished_age_seconds") == 90
    state.backlog_measured(0)
    assert asyncio.run(state.readiness()) == (True, "ok")


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
    assert 89 <= sample(state, "outbox_relay_lag_seconds") <= 120
    assert sample(state, "outbox_outbox_backlog") == 5
    state.backlog_measured(0)
    assert sample(state, "outbox_relay_lag_seconds") == 0


def test_the_backlog_counts_records_after_the_position_through_the_time_index() -> None:
    assert backlog_query(NOW, ALL) == {"time": {"$gt": NOW}}
    assert backlog_query(None, CollectionScope.of(["books"])) == {
        "time": {"$gt": EPOCH},
        "collection": {"$in": ["books"]},
    }
