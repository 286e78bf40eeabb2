"""The audit report (verdict, lines, JSON) and how raw rows from the three stores are read."""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from infra.envelope import CE_REPLAYED, EventType, OutboxRecord
from infra.kafka import ReadMessage
from infra.settings import KafkaSettings, Settings
from operator_tools.audit import (
    PAGE,
    AuditReport,
    AuditWindow,
    DriftCounts,
    _paced,
    _StoppedError,
    _Worker,
    index_state,
    message_row,
    record_row,
    stored_state,
)
from operator_tools.audit_rules import content_digest
from operator_tools.progress_display import NoProgress

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = AuditWindow(
    start=T0 - timedelta(hours=1),
    end=T0,
    judged_until=T0 - timedelta(minutes=2),
    relay_position=T0,
    collection=None,
    grace_s=120,
    settled=False,
)


def report(**counts: Any) -> AuditReport:
    values: dict[str, Any] = {
        "outbox_records": 10,
        "kafka_messages": 12,
        "documents": 4,
        "indexed_documents": 4,
        "lost": 0,
        "extra_copies": 0,
        "unknown_events": 0,
        "misordered": 0,
        "drift": DriftCounts(),
        **counts,
    }
    return AuditReport(window=WINDOW, **values)


def test_the_summary_keeps_the_line_the_fault_harness_parses() -> None:
    line = report(lost=1, extra_copies=2, unknown_events=1, misordered=4, drift=DriftCounts(1, 2))
    head = re.match(r"lost=(\d+) duplicated=(\d+) drift=(\d+) misordered=(\d+)", line.summary())

    assert head is not None
    assert head.groups() == ("1", "3", "3", "4")


def test_the_command_line_names_the_counts_in_the_contracts_order() -> None:
    line = report(lost=1, extra_copies=1, misordered=2, drift=DriftCounts(stale=3), replayed=5)

    assert line.counts_line() == "lost=1 duplicated=1 misordered=2 drift=3 replayed=5"


@pytest.mark.parametrize(
    "problem",
    [
        {"lost": 1},
        {"extra_copies": 1},
        {"unknown_events": 1},
        {"misordered": 1},
        {"drift": DriftCounts(changed=1)},
    ],
)
def test_any_lost_duplicated_misordered_or_drifted_fails_the_audit(problem: Any) -> None:
    assert not report(**problem).ok


def test_replays_pending_and_unindexed_work_do_not_fail_a_live_audit() -> None:
    assert report(replayed=7, pending=3, unindexed=2, recovered=1, outside_window=4).ok


def test_the_json_report_has_the_documented_shape() -> None:
    data = orjson.loads(orjson.dumps(report(extra_copies=1, replayed=2).as_dict()))

    assert set(data) == {
        "ok",
        "lost",
        "duplicated",
        "misordered",
        "drift",
        "replayed",
        "not_judged",
        "recovered",
        "outside_window",
        "breakdown",
        "window",
        "read",
        "examples",
        "notes",
    }
    assert data["breakdown"]["duplicated"] == {"extra_copies": 1, "unknown_events": 0}
    assert set(data["breakdown"]["drift"]) == {"missing", "stale", "changed", "ahead", "extra"}
    assert data["window"]["judged_until"] == "2026-11-29T11:58:00.000Z"


# --- rows ----------------------------------------------------------------------------------


def _message(headers: list[tuple[str, bytes | None]], **kw: Any) -> ReadMessage:
    values: dict[str, Any] = {
        "topic": "ns.event.books",
        "partition": 1,
        "offset": 7,
        "timestamp_ms": int(T0.timestamp() * 1000),
        "key": b"d1",
        "value": b"{}",
        "headers": headers,
        **kw,
    }
    return ReadMessage(**values)


def test_a_published_event_reads_back_with_its_id_version_time_and_marker() -> None:
    record = OutboxRecord(
        "e1", "books", "d1", 3, EventType.UPDATED, {"t": 1}, T0 - timedelta(minutes=1)
    )
    event = record.to_kafka("ns.event.books", replayed=True)

    row = message_row(_message(list(event.headers)))

    assert (row.event_id, row.version, row.replayed, row.key) == ("e1", 3, True, "d1")
    assert row.event_time == T0 - timedelta(minutes=1)


def test_a_foreign_message_without_headers_still_reads_back() -> None:
    row = message_row(_message([("ce_aggregateversion", b"x"), (CE_REPLAYED, b"no")], key=None))

    assert (row.event_id, row.version, row.replayed, row.key) == ("", 0, False, "")
    assert row.event_time == T0  # the Kafka timestamp stands in for ce_time


def test_a_stored_record_becomes_a_row_and_an_off_contract_one_is_skipped() -> None:
    settings = Settings(_env_file=None, kafka=KafkaSettings(namespace="ns"))  # type: ignore[call-arg]
    raw = OutboxRecord(
        "e1", "books", "d1", 2, EventType.DELETED, None, T0.replace(tzinfo=None)
    ).to_mongo()

    row = record_row(raw, settings)

    assert row is not None
    assert (row.topic, row.deleted, row.content, row.time) == ("ns.event.books", True, None, T0)
    assert record_row({"_id": "x", "collection": "books"}, settings) is None


def test_index_entries_are_read_by_their_external_version() -> None:
    hit = {"_version": 5, "_source": {"version": 4, "deleted": False, "document": {"a": 1}}}

    assert index_state(hit).version == 5
    assert index_state(hit).content == content_digest({"a": 1})
    assert index_state({"_version": 2, "_source": {"deleted": True, "document": None}}).deleted


def test_mongodb_documents_read_as_the_same_states() -> None:
    assert stored_state({"_id": "d1", "version": 3, "document": {"a": 1}, "deleted": False}) == (
        index_state({"_version": 3, "_source": {"deleted": False, "document": {"a": 1}}})
    )
    assert stored_state({"_id": "d1", "version": 4, "document": None, "deleted": True}).deleted


# --- Ctrl-C ----------------------------------------------------------------------------------


def test_a_paced_pass_stops_at_the_next_page_once_asked() -> None:
    stop = threading.Event()
    seen = []

    def consume() -> None:
        for n in _paced(range(10 * PAGE), NoProgress(), stop):
            seen.append(n)
            stop.set()

    with pytest.raises(_StoppedError):
        consume()
    assert len(seen) == PAGE


async def test_a_cancelled_audit_stops_its_blocking_pass_and_waits_for_it() -> None:
    """Ctrl-C must not wait for a long Kafka read, nor close the store under a running pass."""
    worker = _Worker()
    started, finished = threading.Event(), threading.Event()

    def long_pass() -> None:
        started.set()
        asked = worker.stop.wait(timeout=30)  # a deadline: the test fails, never hangs
        finished.set()
        if asked:
            raise _StoppedError

    task = asyncio.create_task(worker.run(long_pass))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert worker.stop.is_set()
    assert finished.is_set()  # the pass was over before the cancellation went on
