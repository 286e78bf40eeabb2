"""What the indexer has done so far, in memory: the source of readiness and metrics.

Every change goes through one of `IndexerState`'s transitions, which move the counters,
the Prometheus metrics and the readiness monitor together, so they can never disagree.
Transitions run on the event loop (the poll thread hands its lag over with
`call_soon_threadsafe`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from indexer.batch import DLQ, INDEXED, STALE
from indexer.metrics import IndexerMetrics
from infra.health import ProgressMonitor

TopicPartitionKey = tuple[str, int]

DEFAULT_STALL_AFTER_S = 30.0
__all__ = ["DLQ", "INDEXED", "STALE", "IndexerState", "ParkedInfo", "count_results"]

# The dependency behind each retried operation, for readiness.
_DEPENDENCY = {
    "es_bulk": "Elasticsearch",
    "es_index_create": "Elasticsearch",
    "dlq_write": "Kafka (dead-letter topic)",
}


@dataclass
class ParkedInfo:
    """A parked collection as readiness, metrics and the parking report show it."""

    reason: str
    since: datetime
    events: int


@dataclass
class IndexerState:
    """Counters and positions of one indexer process."""

    events_consumed: int = 0
    events_applied: int = 0  # Elasticsearch took the write
    events_already_applied: int = 0  # 409, or superseded by a newer event in the same batch
    events_dead_lettered: int = 0
    batches: int = 0
    retries: int = 0  # Elasticsearch or DLQ attempts that failed and were retried
    retrying_since: float | None = None  # monotonic time of the first failed try, if failing
    lag: dict[TopicPartitionKey, int] = field(default_factory=dict)
    parked: dict[str, ParkedInfo] = field(default_factory=dict)
    monitor: ProgressMonitor = field(
        default_factory=lambda: ProgressMonitor(stall_after_s=DEFAULT_STALL_AFTER_S)
    )
    metrics: IndexerMetrics = field(default_factory=IndexerMetrics)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    async def readiness(self) -> tuple[bool, str]:
        """For `HealthServer`: red while a collection is parked, a dependency fails, or
        events wait without progress; the detail names what."""
        if self.parked:
            names = "; ".join(
                f"{c} ({info.events} events, since {info.since:%H:%M:%S}): {info.reason}"
                for c, info in sorted(self.parked.items())
            )
            return False, f"parked collections: {names}"
        return self.monitor.readiness()

    # --- transitions ---------------------------------------------------------------------

    def batch_consumed(self, events: int) -> None:
        self.events_consumed += events

    def bulk_sent(self, body_bytes: int) -> None:
        """A bulk request of `body_bytes` went out."""
        self.metrics.bulk_bytes.observe(body_bytes)

    def bulk_answered(self, seconds: float | None, end_to_end_lags: Iterable[float]) -> None:
        """Elasticsearch answered a bulk request (in `seconds`, when given);
        `end_to_end_lags` are the commit → ack seconds of events it acknowledged."""
        if seconds is not None:
            self.metrics.bulk_seconds.observe(seconds)
        for lag in end_to_end_lags:
            self.metrics.end_to_end_lag_seconds.observe(max(0.0, lag))

    def batch_acknowledged(
        self,
        *,
        results: Mapping[tuple[str, str], int],
        events: int,
    ) -> None:
        """Events are acknowledged (Elasticsearch and DLQ) and their offsets queued.

        `results` counts events per (collection, result), result one of indexed/stale/dlq;
        `events` is the size of the batch they came in (0 for a parked collection's retry).
        """
        self.batches += 1
        for (collection, result), count in results.items():
            if result == INDEXED:
                self.events_applied += count
            elif result == STALE:
                self.events_already_applied += count
            self.metrics.events.labels(collection, result).inc(count)
        if events:
            self.metrics.batch_size.observe(events)
        self.monitor.progressed()

    def dead_lettered(self, count: int) -> None:
        """The DLQ acknowledged `count` dead letters."""
        self.events_dead_lettered += count
        self.metrics.dlq.inc(count)

    def attempt_failed(self, operation: str, error: str) -> None:
        """A retriable failure: the operation is tried again after a pause."""
        self.retries += 1
        self.metrics.retries.labels(operation).inc()
        if self.retrying_since is None:
            self.retrying_since = time.monotonic()
        dependency = _DEPENDENCY.get(operation, operation)
        self.monitor.report_problem(f"{dependency} failing ({operation}): {error}")

    def attempt_succeeded(self) -> None:
        """The operation that was failing went through."""
        if self.retrying_since is not None:
            self.retrying_since = None
            self.monitor.problem = None

    def parked_changed(self, collection: str, info: ParkedInfo | None) -> None:
        """A collection was parked, tried again, or released (`info` None)."""
        if info is None:
            if self.parked.pop(collection, None) is not None:
                self.metrics.parked_events.remove(collection)
        else:
            self.parked[collection] = info
            self.metrics.parked_events.labels(collection).set(info.events)
        self.metrics.parked_collections.set(len(self.parked))

    def parked_retry_failed(self) -> None:
        """A parked collection was tried again and is still refused."""
        self.retries += 1
        self.metrics.retries.labels("parked_retry").inc()

    def lag_measured(self, lags: Mapping[TopicPartitionKey, int]) -> None:
        """The poll thread's latest per-partition lag (only assigned partitions)."""
        for topic, partition in set(self.lag) - set(lags):
            self.metrics.consumer_lag.remove(topic, str(partition))
        self.lag = dict(lags)
        for (topic, partition), lag in lags.items():
            self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
        self.monitor.set_waiting(self.total_lag)


def count_results(pairs: Iterable[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """(collection, result) pairs → counts, for `IndexerState.batch_acknowledged`."""
    return Counter(pairs)
