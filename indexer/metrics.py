"""Prometheus metrics of the indexer, served on `/metrics` by `infra.health.HealthServer`.

One `IndexerMetrics` per service, on a registry of its own that `serve()` creates and
hands to the health server: two indexers in one process (tests) never share a sample.
Only `IndexerState`'s transitions update them. Labels stay low-cardinality: the collection
(a REST collection name), the result, the retried operation, and the topic/partition of
the consumer lag.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BULK_BYTES_BUCKETS = (
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    10485760.0,
    16777216.0,
    67108864.0,
    104857600.0,
)


class IndexerMetrics:
    """Every indexer metric, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "outbox_indexer_events",
            "Events acknowledged by the indexer: indexed (Elasticsearch took the write), stale "
            "(the index already held this version or a newer one: a 409, or superseded in its "
            "batch), dlq (dead-lettered).",
            ["collection", "result"],
            registry=r,
        )
        self.batch_size = Histogram(
            "outbox_indexer_batch_size",
            "Events per acknowledged batch.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.bulk_seconds = Histogram(
            "outbox_indexer_bulk_seconds",
            "Duration of one Elasticsearch bulk request that got an answer.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.bulk_bytes = Histogram(
            "outbox_indexer_bulk_bytes",
            "Size of one Elasticsearch bulk request body (capped by "
            "OUTBOX_INDEXER_BULK_MAX_BYTES unless one event alone is larger).",
            buckets=BULK_BYTES_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "outbox_indexer_consumer_lag",
            "Events of an assigned partition not yet acknowledged by Elasticsearch (unfetched "
            "plus fetched but not yet indexed, parked events included), measured every few "
            "seconds.",
            ["topic", "partition"],
            registry=r,
        )
        self.dlq = Counter(
            "outbox_indexer_dlq",
            "Poison events written to the dead-letter topic.",
            registry=r,
        )
        self.retries = Counter(
            "outbox_indexer_retries",
            "Failed attempts that were retried (Elasticsearch bulk or index creation, DLQ "
            "writes, parked collections).",
            ["operation"],
            registry=r,
        )
        self.parked_collections = Gauge(
            "outbox_indexer_parked_collections",
            "Collections whose index refuses writes: their events wait (and hold back their "
            "partitions' offsets) while every other collection is indexed.",
            registry=r,
        )
        self.parked_events = Gauge(
            "outbox_indexer_parked_events",
            "Events waiting with a parked collection.",
            ["collection"],
            registry=r,
        )
        self.end_to_end_lag_seconds = Histogram(
            "outbox_end_to_end_lag_seconds",
            "From an event's commit in MongoDB (the outbox record's time) to Elasticsearch's "
            "acknowledgement of its bulk request; replayed events are not counted.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
