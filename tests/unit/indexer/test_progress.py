"""The indexer state's transitions move counters, metrics and readiness together."""

from __future__ import annotations

from prometheus_client import REGISTRY

from indexer.progress import DLQ, INDEXED, STALE, IndexerState
from infra.health import ProgressMonitor


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_failing_dependency_turns_readiness_red_until_the_retry_succeeds() -> None:
    state = IndexerState(monitor=ProgressMonitor(stall_after_s=30))
    before = sample("outbox_indexer_retries_total", operation="es_bulk")
    state.attempt_failed("es_bulk", "Elasticsearch unreachable: Connection error")
    ready, detail = state.monitor.readiness()
    assert not ready
    assert "Elasticsearch" in detail
    assert sample("outbox_indexer_retries_total", operation="es_bulk") == before + 1
    state.attempt_succeeded()
    assert state.monitor.readiness() == (True, "ok")
    assert state.retrying_since is None


def test_waiting_events_without_progress_turn_readiness_red_and_idle_stays_green() -> None:
    state = IndexerState(monitor=ProgressMonitor(stall_after_s=5))
    state.lag_measured({("u.event.a", 0): 0})
    state.monitor.last_progress -= 10  # ten seconds pass
    assert state.monitor.readiness()[0], "an idle indexer is never stalled"
    state.lag_measured({("u.event.a", 0): 7, ("u.event.a", 1): 2})
    assert sample("outbox_indexer_consumer_lag", topic="u.event.a", partition="0") == 7
    state.monitor.last_progress -= 10
    ready, detail = state.monitor.readiness()
    assert not ready
    assert "9 waiting" in detail
    state.batch_acknowledged(results={("books", INDEXED): 9}, events=9)
    assert state.monitor.readiness()[0]


def test_acknowledged_results_count_per_collection_and_result() -> None:
    state = IndexerState()
    name = "outbox_indexer_events_total"
    before = {r: sample(name, collection="unit_c", result=r) for r in (INDEXED, STALE, DLQ)}
    state.batch_acknowledged(
        results={("unit_c", INDEXED): 3, ("unit_c", STALE): 2, ("unit_c", DLQ): 1}, events=6
    )
    assert (state.events_applied, state.events_already_applied) == (3, 2)
    for result, added in ((INDEXED, 3), (STALE, 2), (DLQ, 1)):
        assert sample(name, collection="unit_c", result=result) == before[result] + added


def test_partitions_no_longer_assigned_leave_the_lag_gauge() -> None:
    state = IndexerState()
    state.lag_measured({("u.event.gone", 0): 4})
    assert sample("outbox_indexer_consumer_lag", topic="u.event.gone", partition="0") == 4
    state.lag_measured({})
    assert (
        REGISTRY.get_sample_value(
            "outbox_indexer_consumer_lag", {"topic": "u.event.gone", "partition": "0"}
        )
        is None
    )
