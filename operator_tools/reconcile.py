"""`outbox reconcile`: compare MongoDB with Elasticsearch by id and version, in one pass.

Both sides are read as streams sorted by document id (MongoDB: a cursor on `_id`;
Elasticsearch: `search_after` on the keyword field `id`) and merged like two sorted
files, so memory stays flat in the collection size. Each id is classified:

| MongoDB | Elasticsearch | verdict |
|---|---|---|
| live v | absent | missing |
| live or tombstone v | older version (live or tombstone) | stale |
| tombstone v, or absent | live, older version | extra |
| any | newer version, or same version in another state | conflict |
| tombstone, or absent | tombstone, or absent | in sync (search shows neither) |

`--repair` re-emits, through Kafka, the outbox record at MongoDB's version (or, when the
outbox TTL has removed it, a fresh record built from the current document; a delete at
Elasticsearch's version + 1 for a document MongoDB does not have at all). A conflict
cannot be repaired by events, whose versions Elasticsearch would refuse: rebuild the
collection with `outbox reindex`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog
from elasticsearch import ApiError, NotFoundError, TransportError

from infra.document_layout import DELETED, DOCUMENT, UPDATED_AT, VERSION, is_tombstone
from infra.elastic import map_elastic_error
from infra.envelope import EventType, OutboxRecord, new_event_id, utc_now
from infra.errors import FatalError
from infra.index_layout import DELETED_FIELD, ID_FIELD, VERSION_FIELD
from infra.naming import is_document_collection
from operator_tools.clients import OperatorClients
from operator_tools.progress_display import NoProgress, Progress
from operator_tools.reemitter import KafkaReemitter, replay_of

log = structlog.get_logger(__name__)

PAGE = 1000
REPAIR_BATCH = 200
MAX_EXAMPLES = 10
MAX_VERIFIED = 10_000


class DriftKind(StrEnum):
    MISSING = "missing"
    STALE = "stale"
    EXTRA = "extra"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Entry:
    """One document as one side holds it: id, version, and whether it is a tombstone."""

    id: str
    version: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class Drift:
    kind: DriftKind
    id: str
    mongo: Entry | None
    index: Entry | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "mongo_version": None if self.mongo is None else self.mongo.version,
            "mongo_deleted": None if self.mongo is None else self.mongo.deleted,
            "es_version": None if self.index is None else self.index.version,
            "es_deleted": None if self.index is None else self.index.deleted,
        }


class UnsortedStreamError(FatalError):
    """A side did not come back sorted by id: the merge would report nonsense."""


def classify(mongo: Entry | None, index: Entry | None) -> DriftKind | None:
    """The verdict for one id (see the table in the module docstring); None: in sync."""
    mongo_live = mongo is not None and not mongo.deleted
    index_live = index is not None and not index.deleted
    if index is None:
        return DriftKind.MISSING if mongo_live else None
    if mongo is None:
        return DriftKind.EXTRA if index_live else None
    if index.version > mongo.version:
        return DriftKind.CONFLICT
    if index.version == mongo.version:
        return None if index.deleted == mongo.deleted else DriftKind.CONFLICT
    # Elasticsearch is behind MongoDB.
    if index_live and not mongo_live:
        return DriftKind.EXTRA
    return DriftKind.STALE


async def _checked(stream: AsyncIterator[Entry], side: str) -> AsyncIterator[Entry]:
    previous: str | None = None
    async for entry in stream:
        if previous is not None and entry.id <= previous:
            raise UnsortedStreamError(
                f"{side} returned id {entry.id!r} after {previous!r}: not sorted by id"
            )
        previous = entry.id
        yield entry


async def diff(mongo: AsyncIterator[Entry], index: AsyncIterator[Entry]) -> AsyncIterator[Drift]:
    """Merge two id-sorted streams; yield the ids whose two sides disagree."""
    left_stream = _checked(mongo, "MongoDB")
    right_stream = _checked(index, "Elasticsearch")
    left = await anext(left_stream, None)
    right = await anext(right_stream, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left.id < right.id):
            pair: tuple[Entry | None, Entry | None] = (left, None)
            left = await anext(left_stream, None)
        elif left is None or right.id < left.id:
            pair = (None, right)
            right = await anext(right_stream, None)
        else:
            pair = (left, right)
            left = await anext(left_stream, None)
            right = await anext(right_stream, None)
        kind = classify(*pair)
        if kind is not None:
            m, i = pair
            doc_id = m.id if m is not None else i.id if i is not None else ""
            yield Drift(kind, doc_id, m, i)


# --- the two sides -----------------------------------------------------------------------


async def mongo_entries(
    clients: OperatorClients, collection: str, progress: Progress | None = None
) -> AsyncIterator[Entry]:
    """Every document of `collection` (tombstones included), sorted by `_id`."""
    coll = clients.db[collection]
    cursor = coll.find({}, {VERSION: 1, DELETED: 1, DOCUMENT: 1}).sort("_id", 1)
    async with cursor.batch_size(PAGE) as docs:
        async for raw in docs:
            if not isinstance(raw["_id"], str):
                raise UnsortedStreamError(
                    f"{collection}: _id {raw['_id']!r} is not a string; cannot merge by id"
                )
            deleted = is_tombstone(raw)
            if progress is not None:
                progress.advance()
            yield Entry(raw["_id"], int(raw["version"]), deleted)


async def index_entries(clients: OperatorClients, collection: str) -> AsyncIterator[Entry]:
    """Every document behind the collection's alias, sorted by `id` (search_after pages)."""
    alias = clients.settings.es.alias_for(collection)
    es = clients.es
    search_after: list[Any] | None = None
    while True:
        try:
            response = await es.search(
                index=alias,
                size=PAGE,
                sort=[{ID_FIELD: "asc"}],
                source_includes=[DELETED_FIELD, VERSION_FIELD],
                version=True,
                search_after=search_after,
                query={"match_all": {}},
            )
        except NotFoundError:
            return  # no index yet: every live MongoDB document is missing
        except (ApiError, TransportError) as e:
            raise map_elastic_error(e) from e
        hits = response["hits"]["hits"]
        for hit in hits:
            source = hit.get("_source") or {}
            version = hit.get("_version", source.get(VERSION_FIELD))
            yield Entry(str(hit["_id"]), int(version), bool(source.get(DELETED_FIELD)))
        if len(hits) < PAGE:
            return
        search_after = hits[-1]["sort"]


async def refresh(clients: OperatorClients, collection: str) -> None:
    """Make everything the indexer acknowledged visible to the scan."""
    try:
        await clients.es.indices.refresh(index=clients.settings.es.alias_for(collection))
    except NotFoundError:
        return
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e


async def collections_to_check(clients: OperatorClients, only: str | None) -> list[str]:
    """`only`, or every document collection in the database (outbox and service ones skipped)."""
    if only:
        return [only]
    names = await clients.db.list_collection_names()
    return sorted(n for n in names if is_document_collection(n, clients.settings.mongo))


# --- repair ------------------------------------------------------------------------------


def synthesized_record(collection: str, raw: dict[str, Any]) -> OutboxRecord:
    """A fresh event for the current MongoDB state (its outbox record has expired)."""
    deleted = is_tombstone(raw)
    version = int(raw[VERSION])
    if deleted:
        event_type = EventType.DELETED
    else:
        event_type = EventType.CREATED if version == 1 else EventType.UPDATED
    time = raw.get(UPDATED_AT) or utc_now()
    return OutboxRecord(
        event_id=new_event_id(),
        collection=collection,
        document_id=str(raw["_id"]),
        version=version,
        type=event_type,
        payload=None if deleted else raw.get(DOCUMENT),
        time=time,
    )


def delete_beyond(collection: str, entry: Entry) -> OutboxRecord:
    """A delete one version above what Elasticsearch holds, for an id MongoDB never had."""
    return OutboxRecord(
        event_id=new_event_id(),
        collection=collection,
        document_id=entry.id,
        version=entry.version + 1,
        type=EventType.DELETED,
        payload=None,
        time=utc_now(),
    )


async def repair_records(
    clients: OperatorClients, collection: str, drifts: Sequence[Drift]
) -> list[OutboxRecord]:
    """The events that bring Elasticsearch to MongoDB's state for `drifts` (no conflicts)."""
    outbox = clients.db[clients.settings.mongo.outbox_collection]
    wanted = {d.id: d.mongo.version for d in drifts if d.mongo is not None}
    originals: dict[str, OutboxRecord] = {}
    if wanted:
        query = {"collection": collection, "document_id": {"$in": list(wanted)}}
        async for raw in outbox.find(query):
            record = OutboxRecord.from_mongo(raw)
            if wanted.get(record.document_id) == record.version:
                originals[record.document_id] = record
    expired = [i for i in wanted if i not in originals]
    current: dict[str, dict[str, Any]] = {}
    if expired:
        async for raw in clients.db[collection].find({"_id": {"$in": expired}}):
            current[str(raw["_id"])] = raw
    records: list[OutboxRecord] = []
    for d in drifts:
        if d.mongo is None:
            assert d.index is not None
            records.append(delete_beyond(collection, d.index))
        elif d.id in originals:
            records.append(originals[d.id])
        elif d.id in current and int(current[d.id]["version"]) >= d.mongo.version:
            records.append(synthesized_record(collection, current[d.id]))
        # else: the document changed under us; its own event is on its way.
    return records


# --- the use case ------------------------------------------------------------------------


@dataclass
class CollectionReport:
    collection: str
    mongo_documents: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in DriftKind})
    examples: list[dict[str, Any]] = field(default_factory=list)
    repair_events: int = 0

    @property
    def drifted(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "mongo_documents": self.mongo_documents,
            "drifted": self.drifted,
            "counts": self.counts,
            "examples": self.examples,
            "repair_events": self.repair_events,
        }


@dataclass
class ReconcileReport:
    collections: list[CollectionReport]
    repaired: bool = False
    verified: bool | None = None  # after a repair: did Elasticsearch catch up in time?

    @property
    def drifted(self) -> int:
        return sum(c.drifted for c in self.collections)

    @property
    def in_sync(self) -> bool:
        """True when nothing drifted, or everything drifted was repaired and verified."""
        return self.drifted == 0 or (self.repaired and bool(self.verified))

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "drifted": self.drifted,
            "repaired": self.repaired,
            "verified": self.verified,
            "collections": [c.as_dict() for c in self.collections],
        }


async def reconcile(
    clients: OperatorClients,
    *,
    collection: str | None = None,
    repair: bool = False,
    verify_timeout_s: float = 30.0,
    progress: Progress | None = None,
    actor: str = "cli",
) -> ReconcileReport:
    """Compare (and with `repair`, re-emit events for) one or every collection."""
    progress = progress or NoProgress()
    names = await collections_to_check(clients, collection)
    log.info("reconcile_started", actor=actor, collections=names, repair=repair)
    report = ReconcileReport(collections=[], repaired=repair)
    publisher = KafkaReemitter(clients.settings.kafka) if repair else None
    to_verify: list[tuple[str, OutboxRecord]] = []
    try:
        for name in names:
            report.collections.append(
                await _reconcile_collection(clients, name, publisher, progress, to_verify)
            )
    finally:
        if publisher is not None:
            await publisher.flush()
    if repair and report.drifted:
        conflicts = sum(c.counts[DriftKind.CONFLICT.value] for c in report.collections)
        report.verified = conflicts == 0 and await _wait_applied(
            clients, to_verify, verify_timeout_s
        )
    log.info(
        "reconcile_finished",
        actor=actor,
        drifted=report.drifted,
        repaired=repair,
        verified=report.verified,
    )
    return report


async def _reconcile_collection(
    clients: OperatorClients,
    name: str,
    publisher: KafkaReemitter | None,
    progress: Progress,
    to_verify: list[tuple[str, OutboxRecord]],
) -> CollectionReport:
    """Diff one collection; with a publisher, re-emit repairs in batches as drift streams by."""
    section = CollectionReport(name)
    section.mongo_documents = await clients.db[name].estimated_document_count()
    progress.start(f"reconciling {name}", section.mongo_documents)
    await refresh(clients, name)
    pending: list[Drift] = []

    async def flush_repairs() -> None:
        assert publisher is not None
        records = await repair_records(clients, name, pending)
        await publisher.publish([replay_of(r, clients.settings.kafka) for r in records])
        section.repair_events += len(records)
        # Verification keeps ids only up to a bound: memory stays flat.
        room = max(0, MAX_VERIFIED - len(to_verify))
        to_verify.extend((name, r) for r in records[:room])
        pending.clear()

    async for drift in diff(mongo_entries(clients, name, progress), index_entries(clients, name)):
        section.counts[drift.kind.value] += 1
        if len(section.examples) < MAX_EXAMPLES:
            section.examples.append(drift.as_dict())
        log.info("drift_found", collection=name, document_id=drift.id, kind=drift.kind.value)
        if publisher is not None and drift.kind is not DriftKind.CONFLICT:
            pending.append(drift)
            if len(pending) >= REPAIR_BATCH:
                await flush_repairs()
    if publisher is not None and pending:
        await flush_repairs()
    return section


async def _wait_applied(
    clients: OperatorClients, records: Sequence[tuple[str, OutboxRecord]], timeout_s: float
) -> bool:
    """Poll Elasticsearch until every re-emitted version is there (or newer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    remaining = list(records)
    while remaining:
        still: list[tuple[str, OutboxRecord]] = []
        for name in {n for n, _ in remaining}:
            batch = [r for n, r in remaining if n == name]
            try:
                response = await clients.es.mget(
                    index=clients.settings.es.alias_for(name),
                    ids=[r.document_id for r in batch],
                    source=False,
                )
            except NotFoundError:
                still.extend((name, r) for r in batch)
                continue
            except (ApiError, TransportError) as e:
                raise map_elastic_error(e) from e
            versions = {d["_id"]: d.get("_version", 0) for d in response["docs"] if d.get("found")}
            still.extend((name, r) for r in batch if versions.get(r.document_id, 0) < r.version)
        remaining = still
        if not remaining:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True
