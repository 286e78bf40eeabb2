"""The fault scenarios' configuration and the audit restricted to some collections."""

from __future__ import annotations

import inspect
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from bench import hostile_writer
from bench.hostile_writer import HostileExpectations
from bench.load import LoadStats
from faults.cli import configs
from faults.hostile import HostileObserved, HostileVerdict, judge
from faults.scenarios import SCENARIOS, FaultResult, combined_report
from faults.scenarios import hostile_writer as hostile_config
from indexer.metrics import BULK_BYTES_BUCKETS
from operator_tools.audit import AuditReport, AuditWindow, DriftCounts

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HOSTILE_COLLECTIONS = {
    hostile_writer.LEGACY_COLLECTION,
    hostile_writer.SQUATTER_COLLECTION,
    hostile_writer.CONFLICT_COLLECTION,
    hostile_writer.EDGE_COLLECTION,
    hostile_writer.DIRECT_COLLECTION,
    hostile_writer.BULK_COLLECTION,
}


def report(collection: str, **counts: Any) -> AuditReport:
    values: dict[str, Any] = {
        "outbox_records": 10,
        "kafka_messages": 10,
        "documents": 4,
        "indexed_documents": 4,
        "lost": 0,
        "extra_copies": 0,
        "unknown_events": 0,
        "misordered": 0,
        "drift": DriftCounts(),
    }
    values.update(counts)
    window = AuditWindow(
        start=T0,
        end=T0,
        judged_until=None,
        relay_position=None,
        collection=collection,
        grace_s=0.0,
        settled=True,
    )
    return AuditReport(window=window, **values)


def test_make_faults_runs_the_hostile_writer() -> None:
    assert "hostile-writer" in [c.name for c in configs([], short=False, seed=1)]


@pytest.mark.parametrize("short", [False, True])
def test_the_hostile_scenario_audits_only_its_load_whose_collections_are_its_own(
    short: bool,
) -> None:
    (config,) = SCENARIOS["hostile-writer"](short=short)
    assert config.hostile
    assert config.audited == config.collections
    assert not set(config.collections) & HOSTILE_COLLECTIONS
    assert config.relay_kills > 0
    assert config.indexer_kills > 0


def test_the_hostile_scenario_byte_cap_splits_the_mix_batch_and_can_be_checked() -> None:
    """`hostile_writes` writes at least four 200 kB documents in one go: a cap above one
    and under two of them cannot send that batch in one request; the cap is a bucket
    bound of the indexer's bulk-bytes histogram, so a request over it shows there."""
    config = hostile_config()
    assert config.bulk_max_bytes is not None
    doc_bytes = inspect.signature(hostile_writer.hostile_writes).parameters["doc_bytes"].default
    assert doc_bytes < config.bulk_max_bytes < 2 * doc_bytes
    assert float(config.bulk_max_bytes) in BULK_BYTES_BUCKETS


def test_combined_report_sums_counts_and_keeps_every_example() -> None:
    a = report(
        "novels",
        lost=1,
        drift=DriftCounts(missing=2, stale=1),
        examples={"lost": ({"event_id": "e1"},)},
        notes=("n",),
    )
    b = report(
        "writers",
        extra_copies=1,
        unknown_events=2,
        misordered=3,
        drift=DriftCounts(stale=1, extra=4),
        examples={"lost": ({"event_id": "e2"},), "drift": ({"id": "d"},)},
        notes=("n", "m"),
        pending=5,
    )
    combined = combined_report([a, b], ["novels", "writers"])
    assert (combined.lost, combined.duplicated, combined.misordered) == (1, 3, 3)
    assert combined.drift == DriftCounts(missing=2, stale=2, extra=4)
    assert (combined.outbox_records, combined.pending) == (20, 5)
    assert combined.examples["lost"] == ({"event_id": "e1"}, {"event_id": "e2"})
    assert combined.notes == ("n", "m")
    assert combined.window.collection == "novels,writers"
    assert not combined.ok


def test_combined_clean_reports_are_ok() -> None:
    combined = combined_report([report("novels"), report("writers")], ["novels", "writers"])
    assert combined.ok
    assert combined.summary().startswith("lost=0 duplicated=0 drift=0 misordered=0")


def test_a_failed_hostile_check_fails_the_scenario_line_despite_a_clean_audit() -> None:
    config = hostile_config()
    clean = report("novels,writers")
    passed = FaultResult(config=config, load=LoadStats(), audit=clean, hostile=verdict(ok=True))
    assert passed.ok
    assert "faults PASS" in passed.summary()
    assert "| hostile: dlq=1/1 repeated=0" in passed.summary()
    failed = FaultResult(config=config, load=LoadStats(), audit=clean, hostile=verdict(ok=False))
    assert not failed.ok
    assert failed.summary().startswith(
        "hostile-writer: faults FAIL: lost=0 duplicated=0 drift=0 misordered=0"
    )
    assert "| hostile: dlq=0/1 repeated=1" in failed.summary()


def verdict(*, ok: bool) -> HostileVerdict:
    expect = HostileExpectations(dead_letters=Counter({"e1": 1}))
    seen = HostileObserved(dead_letters=Counter({"e1": 1 if ok else 2}))
    return judge(expect, seen)
