"""The audit: compare the outbox with Kafka and MongoDB with Elasticsearch.

* **lost**: outbox records (the ground truth of what was committed) with no event in Kafka's
  read_committed view, counted by `ce_id`;
* **duplicated**: extra copies of an event id in Kafka (n copies count n - 1), plus events
  whose id is in no outbox record;
* **misordered**: places where a document's `ce_aggregateversion` does not grow strictly in
  partition order, or where one document's events sit on more than one partition;
* **drift**: MongoDB documents (tombstones included) missing from Elasticsearch or held at
  another version or deleted-flag, plus Elasticsearch documents MongoDB does not have.

The counting rules are pure functions; the readers fetch the three views.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError
from elasticsearch.helpers import async_scan

from infra.elastic import elastic_client
from infra.envelope import CE_AGGREGATEVERSION, CE_ID, headers_dict
from infra.kafka import read_to_end, topic_partitions
from infra.mongo import MongoClient, mongo_client
from infra.settings import Settings

DocKey = tuple[str, str]  # (collection, document id)
DocState = tuple[int, bool]  # (version, deleted)


@dataclass(frozen=True, slots=True)
class KafkaEvent:
    """One message of an event topic, as far as the audit cares."""

    topic: str
    partition: int
    offset: int
    key: str
    event_id: str
    version: int


@dataclass(frozen=True, slots=True)
class Delivery:
    lost: int
    duplicated: int
    unexpected: int
    lost_examples: tuple[str, ...] = ()
    duplicated_examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Drift:
    missing: int
    stale: int
    extra: int
    examples: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.missing + self.stale + self.extra


def count_delivery(outbox_ids: Iterable[str], kafka_ids: Iterable[str]) -> Delivery:
    """Every outbox id must appear exactly once among the Kafka ids."""
    expected = set(outbox_ids)
    seen = Counter(kafka_ids)
    lost = sorted(expected - seen.keys())
    dupes = sorted(i for i, n in seen.items() if n > 1)
    unexpected = [i for i in seen if i not in expected]
    return Delivery(
        lost=len(lost),
        duplicated=sum(seen[i] - 1 for i in dupes),
        unexpected=sum(seen[i] for i in unexpected),
        lost_examples=tuple(lost[:5]),
        duplicated_examples=tuple(dupes[:5]),
    )


def count_misordered(events: Iterable[KafkaEvent]) -> int:
    """Violations of per-document order: versions must grow strictly along the partition."""
    by_document: dict[tuple[str, str], list[KafkaEvent]] = defaultdict(list)
    for event in events:
        by_document[(event.topic, event.key)].append(event)
    violations = 0
    for document_events in by_document.values():
        partitions = {e.partition for e in document_events}
        violations += len(partitions) - 1
        ordered = sorted(document_events, key=lambda e: (e.partition, e.offset))
        violations += sum(
            1
            for before, after in itertools.pairwise(ordered)
            if before.partition == after.partition and after.version <= before.version
        )
    return violations


def compare_index(mongo: Mapping[DocKey, DocState], es: Mapping[DocKey, DocState]) -> Drift:
    """Elasticsearch must hold every MongoDB document at its version and deleted-flag."""
    missing = [k for k in mongo if k not in es]
    stale = [k for k in mongo if k in es and es[k] != mongo[k]]
    extra = [k for k in es if k not in mongo]
    examples = [f"missing {c}/{i} v{mongo[(c, i)][0]}" for c, i in missing[:3]]
    examples += [f"stale {c}/{i} es={es[(c, i)]} mongo={mongo[(c, i)]}" for c, i in stale[:3]]
    examples += [f"extra {c}/{i}" for c, i in extra[:3]]
    return Drift(len(missing), len(stale), len(extra), tuple(examples))


@dataclass(frozen=True)
class AuditReport:
    outbox_records: int
    kafka_events: int
    mongo_documents: int
    es_documents: int
    delivery: Delivery
    misordered: int
    drift: Drift
    read_s: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def lost(self) -> int:
        return self.delivery.lost

    @property
    def duplicated(self) -> int:
        return self.delivery.duplicated + self.delivery.unexpected

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.drift.total == 0
            and (self.misordered == 0)
        )

    def fingerprint(self) -> tuple[int, ...]:
        """What changes while the pipeline is still moving."""
        return (
            self.outbox_records,
            self.kafka_events,
            self.mongo_documents,
            self.es_documents,
            self.lost,
            self.duplicated,
            self.drift.total,
        )

    def summary(self) -> str:
        return (
            f"lost={self.lost} duplicated={self.duplicated} drift={self.drift.total} "
            f"misordered={self.misordered} (outbox={self.outbox_records} "
            f"kafka={self.kafka_events} mongo_docs={self.mongo_documents} "
            f"es_docs={self.es_documents})"
        )

    def details(self) -> list[str]:
        lines = []
        if self.delivery.lost_examples:
            lines.append(f"lost event ids, e.g. {', '.join(self.delivery.lost_examples)}")
        if self.delivery.duplicated_examples:
            lines.append(f"duplicated ids, e.g. {', '.join(self.delivery.duplicated_examples)}")
        if self.delivery.unexpected:
            lines.append(f"{self.delivery.unexpected} Kafka events match no outbox record")
        if self.drift.total:
            lines.append(
                f"drift: missing={self.drift.missing} stale={self.drift.stale} "
                f"extra={self.drift.extra}; " + "; ".join(self.drift.examples)
            )
        return lines


# --- readers -------------------------------------------------------------------------------


async def read_outbox(client: MongoClient, settings: Settings) -> list[dict[str, Any]]:
    """Every outbox record: id, collection, document id, version."""
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    projection = {"_id": 1, "collection": 1, "document_id": 1, "version": 1}
    return [raw async for raw in outbox.find({}, projection)]


async def read_mongo_documents(
    client: MongoClient, settings: Settings, collections: Iterable[str]
) -> dict[DocKey, DocState]:
    db = client[settings.mongo.database]
    found: dict[DocKey, DocState] = {}
    for collection in collections:
        async for raw in db[collection].find({}, {"version": 1, "deleted": 1}):
            found[(collection, str(raw["_id"]))] = (int(raw["version"]), bool(raw.get("deleted")))
    return found


async def read_es_documents(
    es: AsyncElasticsearch, settings: Settings, collections: Iterable[str]
) -> dict[DocKey, DocState]:
    """Every indexed document (tombstones too) by the external `_version` and the flag."""
    found: dict[DocKey, DocState] = {}
    for collection in collections:
        alias = settings.es.alias_for(collection)
        try:
            await es.indices.refresh(index=alias)
        except NotFoundError:
            continue  # nothing indexed for this collection yet
        async for hit in async_scan(
            es,
            index=alias,
            query={"query": {"match_all": {}}, "_source": ["deleted", "version"], "version": True},
            size=2000,
        ):
            version = int(hit.get("_version") or hit["_source"]["version"])
            found[(collection, str(hit["_id"]))] = (version, bool(hit["_source"].get("deleted")))
    return found


def read_kafka_events(settings: Settings, topics: Iterable[str]) -> list[KafkaEvent]:
    """Everything in `topics` a read_committed consumer sees, from the start to the end.

    Blocking: run it in a thread. Assigned (no group membership), so it never moves the
    indexer's offsets.
    """
    parts = topic_partitions(settings.kafka, sorted(topics))
    events: list[KafkaEvent] = []
    for message in read_to_end(settings.kafka, parts, purpose="bench-audit"):
        headers = headers_dict(message.headers)
        events.append(
            KafkaEvent(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key.decode(errors="replace") if message.key else "",
                event_id=headers.get(CE_ID, ""),
                version=int(headers.get(CE_AGGREGATEVERSION) or 0),
            )
        )
    return events


async def audit(settings: Settings) -> AuditReport:
    """One full audit of the three views (outbox, Kafka, Elasticsearch) against MongoDB."""
    started = time.monotonic()
    client = mongo_client(settings.mongo, app_name="bench-audit")
    es = elastic_client(settings.es)
    try:
        outbox = await read_outbox(client, settings)
        collections = sorted({str(r["collection"]) for r in outbox})
        topics = [settings.kafka.event_topic(c) for c in collections]
        events = await asyncio.to_thread(read_kafka_events, settings, topics)
        mongo_docs = await read_mongo_documents(client, settings, collections)
        es_docs = await read_es_documents(es, settings, collections)
    finally:
        await client.close()
        await es.close()
    return AuditReport(
        outbox_records=len(outbox),
        kafka_events=len(events),
        mongo_documents=len(mongo_docs),
        es_documents=len(es_docs),
        delivery=count_delivery((str(r["_id"]) for r in outbox), (e.event_id for e in events)),
        misordered=count_misordered(events),
        drift=compare_index(mongo_docs, es_docs),
        read_s=time.monotonic() - started,
    )


async def audit_when_idle(
    settings: Settings, *, timeout_s: float, settle_s: float = 20.0, interval_s: float = 2.0
) -> AuditReport:
    """Audit until the views agree, or until nothing moved for `settle_s`, or `timeout_s`.

    An agreeing audit ends the wait at once: the pipeline is idle and correct. Otherwise the
    last report is returned once the pipeline stopped moving (a real loss or drift) or the
    time is up (the pipeline is stuck, which the report shows as lost or drift).
    """
    deadline = time.monotonic() + timeout_s
    last_change = time.monotonic()
    previous: tuple[int, ...] | None = None
    while True:
        report = await audit(settings)
        if report.ok:
            return report
        now = time.monotonic()
        if report.fingerprint() != previous:
            previous, last_change = report.fingerprint(), now
        if now - last_change >= settle_s or now >= deadline:
            return report
        await asyncio.sleep(interval_s)
