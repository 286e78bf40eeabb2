"""Prometheus metrics of the relay, served on `/metrics` by `infra.health.HealthServer`.

prometheus_client's default registry is process-wide by design, so each metric is defined
once here (one relay per process in production). Only `RelayState`'s transitions update
them; nothing else in the relay touches these objects. Labels stay low-cardinality: the
collection (a REST collection name) and the transaction result.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter(
    "outbox_relay_events_published",
    "Outbox records published to their event topic (committed Kafka transactions).",
    ["collection"],
)
TRANSACTIONS = Counter(
    "outbox_relay_transactions",
    "Kafka transactions of the relay by outcome (heartbeat checkpoints included).",
    ["result"],
)
BATCH_SIZE = Histogram(
    "outbox_relay_batch_size",
    "Events per committed Kafka transaction (heartbeats, which carry none, excluded).",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
COMMIT_SECONDS = Histogram(
    "outbox_relay_commit_seconds",
    "Time to produce a batch and commit its Kafka transaction.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LAG_SECONDS = Gauge(
    "outbox_relay_lag_seconds",
    "Seconds between now and the relay's position (outbox time of the last published "
    "record, or the oplog time of the last heartbeat); 0 when the backlog is 0.",
)
BACKLOG = Gauge(
    "outbox_outbox_backlog",
    "Outbox records newer than the relay's position (not yet in a committed transaction).",
)
OPLOG_WINDOW_SECONDS = Gauge(
    "outbox_relay_oplog_window_seconds",
    "Seconds of oplog history behind the relay's checkpoint, where the server tells.",
)
HISTORY_LOST = Counter(
    "outbox_relay_history_lost",
    "Times the change stream could not resume and the relay recovered from the outbox.",
)
DUPLICATES_POSSIBLE = Counter(
    "outbox_relay_duplicates_possible",
    "Records older than the checkpoint published during a recovery (see the relay README).",
)
DLQ = Counter(
    "outbox_relay_dlq",
    "Outbox records sent to the dead-letter topic instead of their event topic.",
)
ACTIVE = Gauge(
    "outbox_relay_active",
    "1 while this process holds the relay lease and publishes, 0 while it stands by.",
)
