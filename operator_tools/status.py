"""`outbox status`: one read-only look at every stage, in a second or two.

Definitions (also in docs/operating.md):

- **backlog**: outbox records of the relay's collections whose `time` is later than the
  relay's position, i.e. committed in MongoDB but not yet in a committed Kafka
  transaction, **plus the unowned records**. The position
  (`outbox_relay.checkpoint.checkpoint_position`) comes from the last *committed* Kafka
  checkpoint: in stream mode the later of the time of the record it names
  (`last_event_id`) and its oplog time (second precision; heartbeats move it on while the
  outbox is idle); while recovering, the time its recovery starts from. Record times and
  oplog times both come from MongoDB's clock, so it is exact to about a second: a record
  committed in the same second just before the checkpoint may still be counted until the
  next heartbeat. No checkpoint yet: every retained record.
- **unowned**: outbox records of collections that no relay's collection list covers
  (from the relays' registrations in `relay_leases`, `outbox_relay.ownership`): nobody
  will publish them until a relay's `OUTBOX_RELAY_COLLECTIONS` names them.
- **oldest unpublished**: the `time` (and age) of the oldest record of the backlog.
- **relay lag**: newest outbox record time minus the position (0 when there is no
  backlog).
- **consumer lag**: per event-topic partition, high watermark minus the indexer group's
  committed offset (transaction markers count as one offset each, so an idle partition
  written transactionally may show a lag of 1 at most per open marker).
- **DLQ size**: dead letters not yet re-driven.
- **parked collections**: collections an indexer set aside because their index refuses
  writes (`indexer.parking`), from each indexer's latest report (`infra.parked_report`).

Problems (exit 1): no active holder of the relay's lease, unowned records, two relay names
publishing one collection, a non-empty DLQ, or a parked collection (one line each, naming
it and why).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from elasticsearch import ApiError, NotFoundError, TransportError

from infra.document_layout import LIVE_QUERY
from infra.elastic import map_elastic_error
from infra.errors import RetriableError
from infra.index_layout import LIVE_FILTER
from infra.kafka import (
    admin_client,
    consumer_config,
    map_kafka_error,
    read_to_end,
    topic_partitions,
)
from infra.parked_report import STALE_AFTER_S, ParkedReport, parked_topic
from infra.settings import KafkaSettings
from operator_tools.clients import CONNECT_TIMEOUT_S, OperatorClients
from operator_tools.dlq_ops import list_entries
from operator_tools.reconcile import collections_to_check
from outbox_relay.backlog import backlog_query, oldest_time
from outbox_relay.checkpoint import checkpoint_position
from outbox_relay.kafka_reader import read_checkpoint
from outbox_relay.lease import LEASE_COLLECTION
from outbox_relay.ownership import Registration, overlaps, read_registrations, unowned
from outbox_relay.scope import CollectionScope

# Offset gaps up to this size are counted message by message (see `_count_small_gaps`).
EXACT_LAG_BELOW = 100


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        }


@dataclass
class StatusReport:
    """Everything `outbox status` shows; `problems` decides the exit code."""

    relay_name: str
    backlog: int = 0
    unowned: int = 0
    unowned_collections: list[str] = field(default_factory=list)
    oldest_unpublished_time: datetime | None = None
    position_event_id: str | None = None
    position_time: datetime | None = None
    checkpoint_mode: str | None = None
    checkpoint_written_at: datetime | None = None
    newest_record_time: datetime | None = None
    lag_seconds: float = 0.0
    relays: list[dict[str, Any]] = field(default_factory=list)
    consumer_lag: list[PartitionLag] = field(default_factory=list)
    parked: list[dict[str, Any]] = field(default_factory=list)
    dlq_total: int = 0
    dlq_pending: int = 0
    collections: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def oldest_unpublished_age_seconds(self) -> float | None:
        if self.oldest_unpublished_time is None:
            return None
        return max(0.0, (datetime.now(UTC) - self.oldest_unpublished_time).total_seconds())

    @property
    def consumer_lag_total(self) -> int:
        return sum(p.lag for p in self.consumer_lag)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "problems": self.problems,
            "relay": {
                "name": self.relay_name,
                "backlog": self.backlog,
                "unowned": {"records": self.unowned, "collections": self.unowned_collections},
                "oldest_unpublished": {
                    "time": _iso(self.oldest_unpublished_time),
                    "age_seconds": self.oldest_unpublished_age_seconds,
                },
                "lag_seconds": self.lag_seconds,
                "position": {
                    "event_id": self.position_event_id,
                    "time": _iso(self.position_time),
                    "checkpoint_mode": self.checkpoint_mode,
                    "checkpoint_written_at": _iso(self.checkpoint_written_at),
                },
                "newest_record_time": _iso(self.newest_record_time),
                "leases": self.relays,
            },
            "indexer": {
                "consumer_lag_total": self.consumer_lag_total,
                "partitions": [p.as_dict() for p in self.consumer_lag],
                "parked": self.parked,
            },
            "dlq": {"pending": self.dlq_pending, "total": self.dlq_total},
            "collections": self.collections,
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def _relay_position(clients: OperatorClients, report: StatusReport) -> None:
    settings = clients.settings
    outbox = clients.db[settings.mongo.outbox_collection]
    scope = CollectionScope.of(settings.relay.collections)
    checkpoint = await read_checkpoint(settings.kafka, settings.relay.name)
    position: datetime | None = None
    if checkpoint is not None:
        report.checkpoint_mode = checkpoint.mode.value
        report.checkpoint_written_at = checkpoint.written_at
        report.position_event_id = checkpoint.last_event_id
        record_time: datetime | None = None
        if checkpoint.last_event_id is not None:
            raw = await outbox.find_one({"_id": checkpoint.last_event_id}, {"time": 1})
            if raw is not None:  # else expired by TTL
                record_time = _aware(raw["time"])
        position = checkpoint_position(checkpoint, record_time)
    report.position_time = position
    # The relay's own definitions, so `outbox status` and the relay's metrics agree.
    own_query = backlog_query(position, scope)
    own = await outbox.count_documents(own_query)
    regs = await read_registrations(clients.db[LEASE_COLLECTION])
    me = Registration(settings.relay.name, scope, position)
    nobody = unowned([me, *regs])
    oldest = [await oldest_time(outbox, own_query)] if own else []
    if not nobody.is_empty:
        query = nobody.mongo_filter()
        report.unowned = await outbox.count_documents(query)
        if report.unowned:
            names = await outbox.distinct("collection", query)
            report.unowned_collections = sorted(str(n) for n in names)
            oldest.append(await oldest_time(outbox, query))
            report.problems.append(
                f"{report.unowned} outbox records in collections no relay publishes: "
                f"{', '.join(report.unowned_collections)} (add them to a relay's "
                "OUTBOX_RELAY_COLLECTIONS)"
            )
    for a, b, shared in overlaps(regs):
        report.problems.append(
            f"relays {a!r} and {b!r} both publish {shared.describe()}: every record of it "
            "is published twice (or delete a retired relay's lease document)"
        )
    report.backlog = own + report.unowned
    report.oldest_unpublished_time = min((t for t in oldest if t is not None), default=None)
    newest = await outbox.find_one(scope.mongo_filter(), {"time": 1}, sort=[("time", -1)])
    if newest is not None:
        report.newest_record_time = _aware(newest["time"])
    if own and report.newest_record_time is not None:
        since = position or report.newest_record_time
        report.lag_seconds = max(0.0, (report.newest_record_time - since).total_seconds())


async def _leases(clients: OperatorClients, report: StatusReport) -> None:
    now = datetime.now(UTC)
    active = False
    async for raw in clients.db[LEASE_COLLECTION].find({}):
        expires = raw.get("expires_at")
        live = raw.get("role") == "active" and expires is not None and _aware(expires) > now
        if raw["_id"] == report.relay_name and live:
            active = True
        report.relays.append(
            {
                "name": raw["_id"],
                "holder": raw.get("holder"),
                "role": "active"
                if live
                else "expired"
                if raw.get("role") == "active"
                else raw.get("role"),
                "expires_at": _iso(expires),
                "last_checkpoint_time": _iso(raw.get("last_checkpoint_time")),
                "events_published": raw.get("events_published"),
                "events_dead_lettered": raw.get("events_dead_lettered"),
                "oplog_seconds_left": raw.get("oplog_seconds_left"),
                "collections": raw.get("collections"),
            }
        )
    if not active:
        report.problems.append(f"no active relay holds the lease {report.relay_name!r}")


def consumer_lag_blocking(settings: KafkaSettings, group_id: str) -> list[PartitionLag]:
    """Committed offsets of the indexer's group against each event partition's end."""
    pattern = re.compile(settings.event_topic_pattern)
    metadata = admin_client(settings).list_topics(timeout=CONNECT_TIMEOUT_S).topics
    parts = [
        TopicPartition(name, p)
        for name in sorted(metadata)
        if pattern.match(name)
        for p in sorted(metadata[name].partitions)
    ]
    if not parts:
        return []
    # Same group id, never subscribed: reads the group's offsets without joining it.
    consumer = Consumer(
        consumer_config(settings, group_id, **{"client.id": f"ops-{uuid.uuid4().hex[:6]}"})
    )
    try:
        committed = consumer.committed(parts, timeout=CONNECT_TIMEOUT_S * 2)
        ends = [
            consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=CONNECT_TIMEOUT_S
            )
            for tp in committed
        ]
    except KafkaException as e:
        raise map_kafka_error(e) from e
    finally:
        consumer.close()
    lags: list[PartitionLag] = []
    for tp, (low, high) in zip(committed, ends, strict=True):
        done = tp.offset if tp.offset >= 0 else None
        start = done if done is not None else low
        lags.append(PartitionLag(tp.topic, tp.partition, done, high, max(0, high - start)))
    _count_small_gaps(settings, lags)
    return lags


def _count_small_gaps(settings: KafkaSettings, lags: list[PartitionLag]) -> None:
    """Replace offset differences by message counts where they are small.

    A transactional producer leaves a commit marker after each transaction; it takes an
    offset but is no message, so an indexer that consumed everything still sits one or
    two offsets behind the end. Reading the few offsets left tells markers from events.
    """
    small = [p for p in lags if 0 < p.lag <= EXACT_LAG_BELOW]
    if not small:
        return
    starts = [TopicPartition(p.topic, p.partition, p.committed or OFFSET_BEGINNING) for p in small]
    counts = {(p.topic, p.partition): 0 for p in small}
    try:
        for message in read_to_end(
            settings, starts, purpose="ops-lag-reader", idle_timeout_s=CONNECT_TIMEOUT_S
        ):
            counts[(message.topic, message.partition)] += 1
    except RetriableError:
        return  # an open transaction holds the end back: keep the offset differences
    for p in small:
        p.lag = counts[(p.topic, p.partition)]


async def _consumer_lag(clients: OperatorClients, report: StatusReport) -> None:
    settings = clients.settings
    report.consumer_lag = await asyncio.to_thread(
        consumer_lag_blocking, settings.kafka, settings.indexer.group_id
    )


def parked_reports_blocking(settings: KafkaSettings) -> list[ParkedReport]:
    """The latest parked-collections report of every indexer instance."""
    partitions = topic_partitions(settings, [parked_topic(settings)])
    latest: dict[bytes, ParkedReport] = {}
    for message in read_to_end(
        settings, partitions, purpose="ops-parked-reader", idle_timeout_s=CONNECT_TIMEOUT_S
    ):
        if message.key is None:
            continue
        if message.value is None:
            latest.pop(message.key, None)
            continue
        try:
            latest[message.key] = ParkedReport.from_kafka(message.value)
        except ValueError:
            continue  # not ours to judge: status shows what it understands
    return sorted(latest.values(), key=lambda r: r.instance)


async def _parked(clients: OperatorClients, report: StatusReport) -> None:
    reports = await asyncio.to_thread(parked_reports_blocking, clients.settings.kafka)
    now = datetime.now(UTC)
    for r in reports:
        age = (now - r.reported_at).total_seconds()
        for entry in r.parked:
            report.parked.append(
                {
                    "collection": entry.collection,
                    "reason": entry.reason,
                    "since": _iso(entry.since),
                    "events": entry.events,
                    "instance": r.instance,
                    "reported_at": _iso(r.reported_at),
                    "stale": age > STALE_AFTER_S,
                }
            )
            stale = f" (reported {age:.0f}s ago: is that indexer still running?)"
            report.problems.append(
                f"indexer {r.instance} parked collection {entry.collection!r} since "
                f"{entry.since:%Y-%m-%d %H:%M:%S}Z ({entry.events} events wait): "
                f"{entry.reason}{stale if age > STALE_AFTER_S else ''}"
            )


async def _dlq(clients: OperatorClients, report: StatusReport) -> None:
    entries = await list_entries(clients)
    report.dlq_total = len(entries)
    report.dlq_pending = sum(1 for e in entries if e.redriven_at is None)
    if report.dlq_pending:
        report.problems.append(f"{report.dlq_pending} dead-lettered events wait in the DLQ")


async def _collection_counts(clients: OperatorClients, report: StatusReport) -> None:
    names = await collections_to_check(clients, None)

    async def one(name: str) -> dict[str, Any]:
        mongo_live = await clients.db[name].count_documents(LIVE_QUERY)
        try:
            response = await clients.es.count(
                index=clients.settings.es.alias_for(name), query=LIVE_FILTER
            )
            es_live: int | None = int(response["count"])
        except NotFoundError:
            es_live = None
        except (ApiError, TransportError) as e:
            raise map_elastic_error(e) from e
        return {"collection": name, "mongo": mongo_live, "elasticsearch": es_live}

    report.collections = list(await asyncio.gather(*(one(n) for n in names)))


async def status(clients: OperatorClients) -> StatusReport:
    """Gather the report; raises `ServerUnreachableError` if a server does not answer."""
    await clients.ping()
    report = StatusReport(relay_name=clients.settings.relay.name)
    await asyncio.gather(
        _relay_position(clients, report),
        _leases(clients, report),
        _consumer_lag(clients, report),
        _parked(clients, report),
        _dlq(clients, report),
        _collection_counts(clients, report),
    )
    return report
