"""Prometheus metrics of the relay, in a registry of the service's own.

`serve()` builds one `RelayMetrics` per relay service and serves its registry on
`/metrics`; tests build their own, so nothing is shared through module globals. Only
`RelayState`'s transitions update them. Labels stay low-cardinality: the collection (a
REST collection name) and the transaction result.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    """Every metric of one relay service (see the relay README for their meaning)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_published = Counter(
            "outbox_relay_events_published",
            "Outbox records published to their event topic (committed Kafka transactions).",
            ["collection"],
            registry=r,
        )
        self.transactions = Counter(
            "outbox_relay_transactions",
            "Kafka transactions of the relay by outcome (heartbeat checkpoints included).",
            ["result"],
            registry=r,
        )
        self.batch_size = Histogram(
            "outbox_relay_batch_size",
            "Events per committed Kafka transaction (heartbeats, which carry none, excluded).",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "outbox_relay_commit_seconds",
            "Time to produce a batch and commit its Kafka transaction.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.lag_seconds = Gauge(
            "outbox_relay_lag_seconds",
            "Seconds between now and the relay's position (outbox time of the last published "
            "record, or the oplog time of the last heartbeat); 0 when the backlog is 0.",
            registry=r,
        )
        self.backlog = Gauge(
            "outbox_outbox_backlog",
            "Outbox records newer than the relay's position (not yet in a committed "
            "transaction), plus records of collections no relay publishes.",
            registry=r,
        )
        self.unowned = Gauge(
            "outbox_outbox_unowned",
            "Outbox records of collections that no relay's OUTBOX_RELAY_COLLECTIONS covers.",
            registry=r,
        )
        self.oldest_unpublished_age_seconds = Gauge(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest outbox record not yet published (this relay's or no relay's); "
            "0 when there is none. Alert well before it reaches the outbox TTL.",
            registry=r,
        )
        self.oplog_window_seconds = Gauge(
            "outbox_relay_oplog_window_seconds",
            "Seconds of oplog history behind the relay's checkpoint, where the server tells.",
            registry=r,
        )
        self.history_lost = Counter(
            "outbox_relay_history_lost",
            "Times the change stream could not resume and the relay recovered from the outbox.",
            registry=r,
        )
        self.duplicates_possible = Counter(
            "outbox_relay_duplicates_possible",
            "Records older than the checkpoint published during a recovery (see the relay README).",
            registry=r,
        )
        self.dlq = Counter(
            "outbox_relay_dlq",
            "Outbox records sent to the dead-letter topic instead of their event topic.",
            registry=r,
        )
        self.active = Gauge(
            "outbox_relay_active",
            "1 while this process holds the relay lease and publishes, 0 while it stands by.",
            registry=r,
        )
