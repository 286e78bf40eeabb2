"""The indexer state's transitions move counters, metrics and readiness together."""

from __future__ import annotations

from datetime import UTC, datetime

from indexer.progress import DLQ, INDEXED, STALE, IndexerState, ParkedInfo
from infra.health import ProgressMonitor


def sample(state: IndexerState, name: str, **labels: str) -> float:
    return state.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_failing_dependency_turns_readiness_red_until_the_retry_succeeds() -> None:
    state = IndexerState(monitor=ProgressMonitor(stall_after_s=30))
    before = sample(state, "outbox_indexer_retries_total", operation="es_bulk")
    state.attempt_failed("es_bulk", "Elasticsearch unreachable: Connection error")
    ready, detail = state.monitor.readiness()
    assert not ready
    assert "Elasticsearch" in detail
    assert sample(state, "outbox_indexer_retries_total", operation="es_bulk") == before + 1
    state.attempt_succeeded()
    assert state.monitor.readiness() == (True, "ok")
    assert state.retrying_since is None


def test_waiting_events_without_progress_turn_readiness_red_and_idle_stays_green() -> None:
    state = IndexerState(monitor=ProgressMonitor(stall_after_s=5))
    state.lag_measured({("u.event.a", 0): 0})
    state.monitor.last_progress -= 10  # ten seconds pass
    assert state.monitor.readiness()[0], "an idle indexer is never stalled"
    state.lag_measured({("u.event.a", 0): 7, ("u.event.a", 1): 2})
    assert sample(state, "outbox_indexer_consumer_lag", topic="u.event.a", partition="0") == 7
    state.monitor.last_progress -= 10
    ready, detail = state.monitor.readiness()
    assert not ready
    assert "9 waiting" in detail
    state.batch_acknowledged(results={("books", INDEXED): 9}, events=9)
    assert state.monitor.readiness()[0]


def test_acknowledged_results_count_per_collection_and_result() -> None:
    state = IndexerState()
    name = "outbox_indexer_events_total"
    before = {r: sample(state, name, collection="unit_c", result=r) for r in (INDEXED, STALE, DLQ)}
    state.batch_acknowledged(
        results={("unit_c", INDEXED): 3, ("unit_c", STALE): 2, ("unit_c", DLQ): 1}, events=6
    )
    assert (state.events_applied, state.events_already_applied) == (3, 2)
    for result, added in ((INDEXED, 3), (STALE, 2), (DLQ, 1)):
        assert sample(state, name, collection="unit_c", result=result) == before[result] + added


def test_partitions_no_longer_assigned_leave_the_lag_gauge() -> None:
    state = IndexerState()
    state.lag_measured({("u.event.gone", 0): 4})
    assert sample(state, "outbox_indexer_consumer_lag", topic="u.event.gone", partition="0") == 4
    state.lag_measured({})
    assert (
        state.metrics.registry.get_sample_value(
            "outbox_indexer_consumer_lag", {"topic": "u.event.gone", "partition": "0"}
        )
        is None
    )


def test_two_indexers_in_one_process_never_share_a_sample() -> None:
    """One registry per service: a second state starts from zero."""
    first, second = IndexerState(), IndexerState()
    first.dead_lettered(3)
    assert sample(first, "outbox_indexer_dlq_total") == 3
    assert sample(second, "outbox_indexer_dlq_total") == 0


async def test_a_parked_collection_turns_readiness_red_naming_it_until_released() -> None:
    state = IndexerState(monitor=ProgressMonitor(stall_after_s=30))
    since = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    state.parked_changed("books-v1", ParkedInfo("alias name is an index", since, 4))
    ready, detail = await state.readiness()
    assert not ready
    assert "books-v1" in detail
    assert "alias name is an index" in detail
    assert sample(state, "outbox_indexer_parked_collections") == 1
    assert sample(state, "outbox_indexer_parked_events", collection="books-v1") == 4
    state.parked_changed("books-v1", None)
    assert await state.readiness() == (True, "ok")
    assert sample(state, "outbox_indexer_parked_collections") == 0
    assert (
        state.metrics.registry.get_sample_value(
            "outbox_indexer_parked_events", {"collection": "books-v1"}
        )
        is None
    )
