"""Prometheus metrics of the indexer, served on `/metrics` by `infra.health.HealthServer`.

prometheus_client's default registry is process-wide by design, so each metric is defined
once here (one indexer per process in production). Only `IndexerState`'s transitions update
them. Labels stay low-cardinality: the collection (a REST collection name), the result, the
retried operation, and the topic/partition of the consumer lag.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "outbox_indexer_events",
    "Events acknowledged by the indexer: indexed (Elasticsearch took the write), stale (the "
    "index already held this version or a newer one: a 409, or superseded in its batch), "
    "dlq (dead-lettered).",
    ["collection", "result"],
)
BATCH_SIZE = Histogram(
    "outbox_indexer_batch_size",
    "Events per acknowledged batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
BULK_SECONDS = Histogram(
    "outbox_indexer_bulk_seconds",
    "Duration of one Elasticsearch bulk request that got an answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CONSUMER_LAG = Gauge(
    "outbox_indexer_consumer_lag",
    "Events of an assigned partition not yet acknowledged by Elasticsearch (unfetched plus "
    "fetched but not yet indexed), measured every few seconds.",
    ["topic", "partition"],
)
DLQ = Counter(
    "outbox_indexer_dlq",
    "Poison events written to the dead-letter topic.",
)
RETRIES = Counter(
    "outbox_indexer_retries",
    "Failed attempts that were retried (Elasticsearch bulk or index creation, DLQ writes).",
    ["operation"],
)
END_TO_END_LAG_SECONDS = Histogram(
    "outbox_end_to_end_lag_seconds",
    "From an event's commit in MongoDB (the outbox record's time) to Elasticsearch's "
    "acknowledgement of its bulk request; replayed events are not counted.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
