"""`outbox audit`: check exactly-once on a live deployment, for a window of outbox records.

For every outbox record of the window (`--since`, default everything retained; one
collection with `--collection`):

- **lost**: no copy of its event in its collection's topic (Kafka's read_committed view),
  although the relay's committed position says it should be there;
- **duplicated**: original copies (no `ce_replayed` marker) beyond the first, plus
  original messages of the window whose `ce_id` no outbox record of the window has (a
  copy some other producer wrote, or an event nobody committed);
- **misordered**: a document's first copies not in version order along its partition,
  or spread over several partitions;
- **drift**: Elasticsearch does not hold the document's newest version (tombstones
  included): missing, stale, changed (same version, other body), ahead of MongoDB, or a
  live entry MongoDB does not have;
- **replayed**: copies an operator re-emitted on purpose; never a problem.

A live pipeline is never judged on what may still be on its way (`audit_rules.Judging`):
a record stamped later than the relay's committed checkpoint position minus `grace` and
not yet in Kafka is *pending*; a document whose newest event the indexer has not
committed past is *unindexed*. Events older than the window, or whose record the TTL
removed, are *outside the window* and never counted.

The reads happen in an order that makes those rules sound: the relay's position, then
the indexer's committed offsets, then the outbox, then Kafka to its end (so everything
the position covers is there), then Elasticsearch (so everything the offsets cover is
there), then MongoDB for the few documents Elasticsearch holds newer than the window.

Memory stays flat: everything goes into an on-disk SQLite database (`audit_store`) and
is judged by streaming joins, one event or one document at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import structlog
from elasticsearch import ApiError, NotFoundError, TransportError

from infra.document_layout import DELETED, DOCUMENT, VERSION
from infra.document_layout import is_tombstone as is_stored_tombstone
from infra.elastic import map_elastic_error
from infra.envelope import (
    CE_AGGREGATEVERSION,
    CE_ID,
    CE_REPLAYED,
    CE_TIME,
    EventType,
    OutboxRecord,
    format_time,
    headers_dict,
    parse_time,
    utc_now,
)
from infra.errors import RetriableError
from infra.index_layout import (
    COMMITTED_AT_FIELD,
    DELETED_FIELD,
    DOCUMENT_FIELD,
    ID_FIELD,
    VERSION_FIELD,
)
from infra.index_layout import is_tombstone as is_index_tombstone
from infra.kafka import (
    READ_IDLE_TIMEOUT_S,
    ReadMessage,
    read_to_end,
    topic_names,
    topic_partitions,
)
from infra.settings import Settings
from operator_tools.audit_rules import (
    DRIFT_KINDS,
    JUDGE_ALL,
    EventState,
    Judging,
    Outcome,
    State,
    Tally,
    UnknownKind,
    content_digest,
    document_settled,
    judge_against_mongodb,
    judge_document,
    judge_event,
    judge_unknown,
    order_violations,
)
from operator_tools.audit_store import AuditStore, MessageRow, RecordRow
from operator_tools.clients import OperatorClients, open_clients
from operator_tools.progress_display import NoProgress, Progress
from operator_tools.status import consumer_lag_blocking
from outbox_relay.checkpoint import CheckpointMode
from outbox_relay.kafka_reader import read_checkpoint

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

PAGE = 1000
LOOKUP_BATCH = 500
# More than MongoDB's transaction lifetime (60 s): a record is stamped before its
# transaction commits, so one stamped before the relay's position may commit after it.
DEFAULT_GRACE = timedelta(seconds=120)
# Kafka timestamps come from the relay's clock, record times from the API hosts': read
# Kafka and Elasticsearch from this much before the window.
CLOCK_MARGIN = timedelta(minutes=5)
# The window never reaches closer than this to the TTL's edge: a record that expires
# while the audit runs (MongoDB's TTL monitor runs every minute) must not turn its event
# into an unknown one.
EXPIRY_MARGIN = timedelta(minutes=10)

_RECORD_FIELDS = {
    "collection": 1,
    "document_id": 1,
    "version": 1,
    "type": 1,
    "payload": 1,
    "time": 1,
}


# --- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftCounts:
    """Documents whose index entry is not the newest version, by kind."""

    missing: int = 0
    stale: int = 0
    changed: int = 0
    ahead: int = 0
    extra: int = 0

    @property
    def total(self) -> int:
        return self.missing + self.stale + self.changed + self.ahead + self.extra

    def as_dict(self) -> dict[str, int]:
        return {k.value: getattr(self, k.value) for k in DRIFT_KINDS}


@dataclass(frozen=True)
class AuditWindow:
    """Which records were audited and how far they were judged."""

    start: datetime
    end: datetime  # when the audit started
    judged_until: datetime | None  # records stamped later and not yet in Kafka are pending
    relay_position: datetime | None
    collection: str | None
    grace_s: float
    settled: bool  # audit_when_idle: everything judged, nothing may be pending
    clamped: bool = False  # --since reached back beyond the outbox retention

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": _iso(self.start),
            "until": _iso(self.end),
            "judged_until": "all" if self.settled else _iso(self.judged_until),
            "relay_position": _iso(self.relay_position),
            "grace_seconds": self.grace_s,
            "collection": self.collection,
            "settled": self.settled,
            "clamped_to_retention": self.clamped,
        }


@dataclass(frozen=True)
class AuditReport:
    """What one audit found; `ok` decides the exit code."""

    window: AuditWindow
    outbox_records: int
    kafka_messages: int
    documents: int
    indexed_documents: int
    lost: int
    extra_copies: int
    unknown_events: int
    misordered: int
    drift: DriftCounts
    replayed: int = 0
    pending: int = 0
    unindexed: int = 0
    recovered: int = 0
    outside_window: int = 0
    examples: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    read_s: float = 0.0

    @property
    def duplicated(self) -> int:
        return self.extra_copies + self.unknown_events

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, misordered or drifted (pending and unindexed are not)."""
        return self.lost + self.duplicated + self.misordered + self.drift.total == 0

    def counts_line(self) -> str:
        """The command's verdict line, in the order the contract names the counts."""
        return (
            f"lost={self.lost} duplicated={self.duplicated} misordered={self.misordered} "
            f"drift={self.drift.total} replayed={self.replayed}"
        )

    def summary(self) -> str:
        """One line; the fault harness parses its `lost= duplicated= drift= misordered=` head."""
        return (
            f"lost={self.lost} duplicated={self.duplicated} drift={self.drift.total} "
            f"misordered={self.misordered} (replayed={self.replayed} pending={self.pending} "
            f"unindexed={self.unindexed} outbox={self.outbox_records} "
            f"kafka={self.kafka_messages} documents={self.documents} "
            f"es_docs={self.indexed_documents})"
        )

    def fingerprint(self) -> tuple[int, ...]:
        """What changes while the pipeline is still moving."""
        return (
            self.outbox_records,
            self.kafka_messages,
            self.indexed_documents,
            self.lost,
            self.duplicated,
            self.misordered,
            self.drift.total,
            self.pending,
            self.unindexed,
        )

    def details(self) -> list[str]:
        """One line per problem kind with examples: where to start reading on a FAIL."""
        lines = []
        for category in ("lost", "duplicated", "misordered", "drift"):
            examples = self.examples.get(category, ())
            if examples:
                shown = "; ".join(_describe(e) for e in examples[:5])
                lines.append(f"{category}, e.g. {shown}")
        lines.extend(self.notes)
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "misordered": self.misordered,
            "drift": self.drift.total,
            "replayed": self.replayed,
            "not_judged": {"pending": self.pending, "unindexed": self.unindexed},
            "recovered": self.recovered,
            "outside_window": self.outside_window,
            "breakdown": {
                "duplicated": {
                    "extra_copies": self.extra_copies,
                    "unknown_events": self.unknown_events,
                },
                "drift": self.drift.as_dict(),
            },
            "window": self.window.as_dict(),
            "read": {
                "outbox_records": self.outbox_records,
                "kafka_messages": self.kafka_messages,
                "documents": self.documents,
                "indexed_documents": self.indexed_documents,
                "seconds": round(self.read_s, 3),
            },
            "examples": {k: list(v) for k, v in self.examples.items()},
            "notes": list(self.notes),
        }


def _describe(example: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in example.items() if v is not None)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else format_time(t)


# --- blocking passes ----------------------------------------------------------------------


class _StoppedError(Exception):
    """A blocking pass gave up because the audit was cancelled (Ctrl-C)."""


class _Worker:
    """Runs the audit's blocking passes in a thread, one at a time.

    A thread cannot be cancelled: when the audit is, the pass is asked to stop at its next
    page and awaited, so Ctrl-C returns promptly and the store closes only once unused.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self.stop.set()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: a stopped pass is expected, not an error
            raise


def _paced(items: Iterable[T], progress: Progress, stop: threading.Event) -> Iterator[T]:
    """`items`, advancing `progress` a page at a time; `_StoppedError` once `stop` is set."""
    n = 0
    for n, item in enumerate(items, start=1):
        yield item
        if n % PAGE == 0:
            progress.advance(PAGE)
            if stop.is_set():
                raise _StoppedError
    progress.advance(n % PAGE)


# --- rows from the three stores ----------------------------------------------------------


def record_row(raw: dict[str, Any], settings: Settings) -> RecordRow | None:
    """A stored outbox record as the audit keeps it; None if it is off the contract."""
    try:
        record = OutboxRecord.from_mongo(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return RecordRow(
        event_id=record.event_id,
        topic=settings.kafka.event_topic(record.collection),
        collection=record.collection,
        document_id=record.document_id,
        version=record.version,
        deleted=record.type is EventType.DELETED,
        content=content_digest(record.payload),
        time=record.time,
    )


def message_row(message: ReadMessage) -> MessageRow:
    """A message of an event topic as the audit keeps it, however off-contract."""
    headers = headers_dict(message.headers)
    try:
        event_time = parse_time(headers[CE_TIME])
    except (KeyError, ValueError):
        event_time = datetime.fromtimestamp(max(0, message.timestamp_ms) / 1000, UTC)
    try:
        version = int(headers.get(CE_AGGREGATEVERSION) or 0)
    except ValueError:
        version = 0
    return MessageRow(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp_ms,
        key=message.key.decode(errors="replace") if message.key else "",
        event_id=headers.get(CE_ID, ""),
        version=version,
        replayed=headers.get(CE_REPLAYED) == "true",
        event_time=event_time,
    )


def index_state(hit: Mapping[str, Any]) -> State:
    """An Elasticsearch hit (search or mget) by its external `_version`."""
    source = hit.get("_source") or {}
    deleted = is_index_tombstone(source)
    version = hit.get("_version", source.get(VERSION_FIELD, 0))
    return State(
        int(version), deleted, None if deleted else content_digest(source.get(DOCUMENT_FIELD))
    )


def stored_state(raw: Mapping[str, Any]) -> State:
    """A MongoDB document (tombstones included)."""
    deleted = is_stored_tombstone(raw)
    return State(int(raw[VERSION]), deleted, None if deleted else content_digest(raw.get(DOCUMENT)))


def _state_text(state: State | None) -> str:
    if state is None:
        return "absent"
    return f"v{state.version}{' (deleted)' if state.deleted else ''}"


# --- reading -----------------------------------------------------------------------------


async def relay_position(clients: OperatorClients) -> datetime | None:
    """Everything stamped up to here is in Kafka, per the relay's last committed checkpoint.

    In stream mode `outbox status`'s rule: the later of the checkpointed record's time and
    the checkpoint's oplog time. While the relay recovers from lost history it publishes
    in document order, not time order, so only what preceded the recovery counts: its
    `recover_from`. None when the relay never checkpointed (or recovers from scratch).
    """
    settings = clients.settings
    checkpoint = await read_checkpoint(settings.kafka, settings.relay.name)
    if checkpoint is None:
        return None
    if checkpoint.mode is CheckpointMode.RECOVERING:
        return checkpoint.recover_from
    candidates: list[datetime] = []
    if checkpoint.last_event_id is not None:
        outbox = clients.db[settings.mongo.outbox_collection]
        raw = await outbox.find_one({"_id": checkpoint.last_event_id}, {"time": 1})
        if raw is not None:  # else expired by the TTL
            t: datetime = raw["time"]
            candidates.append(t if t.tzinfo else t.replace(tzinfo=UTC))
    if checkpoint.wall_time is not None:
        candidates.append(checkpoint.wall_time)
    return max(candidates, default=None)


def _committed_blocking(settings: Settings) -> list[tuple[str, int, int]]:
    lags = consumer_lag_blocking(settings.kafka, settings.indexer.group_id)
    return [(p.topic, p.partition, p.committed) for p in lags if p.committed is not None]


def _event_topics_blocking(settings: Settings, collection: str | None) -> list[str]:
    if collection is not None:
        return [settings.kafka.event_topic(collection)]
    prefix = settings.kafka.event_topic("")
    return sorted(t for t in topic_names(settings.kafka) if t.startswith(prefix) and t != prefix)


async def _load_outbox(
    clients: OperatorClients,
    store: AuditStore,
    start: datetime,
    collection: str | None,
    progress: Progress,
) -> int:
    """Outbox records stamped at or after `start`; returns how many are off the contract."""
    settings = clients.settings
    outbox = clients.db[settings.mongo.outbox_collection]
    query: dict[str, Any] = {"time": {"$gte": start}}
    if collection is not None:
        query["collection"] = collection
    progress.start("reading the outbox", await outbox.count_documents(query))
    unreadable = 0
    batch: list[RecordRow] = []
    async with outbox.find(query, _RECORD_FIELDS).batch_size(PAGE) as cursor:
        async for raw in cursor:
            row = record_row(raw, settings)
            if row is None:
                unreadable += 1
            else:
                batch.append(row)
            if len(batch) >= PAGE:
                await asyncio.to_thread(store.add_records, batch)
                progress.advance(len(batch))
                batch = []
    await asyncio.to_thread(store.add_records, batch)
    progress.advance(len(batch))
    return unreadable


def _load_kafka_blocking(
    settings: Settings,
    store: AuditStore,
    topics: list[str],
    since: datetime,
    *,
    progress: Progress,
    stop: threading.Event,
    read_timeout_s: float,
) -> None:
    progress.start("reading Kafka", None)
    parts = topic_partitions(settings.kafka, topics)
    messages = read_to_end(
        settings.kafka, parts, purpose="audit", since=since, idle_timeout_s=read_timeout_s
    )
    batch: list[MessageRow] = []
    for message in _paced(messages, progress, stop):
        batch.append(message_row(message))
        if len(batch) >= PAGE:
            store.add_messages(batch)
            batch = []
    store.add_messages(batch)


async def load_late_records(
    clients: OperatorClients, store: AuditStore, judging: Judging, collection: str | None
) -> None:
    """Records committed after the outbox was read whose events Kafka already showed."""
    settings = clients.settings
    outbox = clients.db[settings.mongo.outbox_collection]
    for ids in store.unknown_event_ids(judging.start, LOOKUP_BATCH):
        query: dict[str, Any] = {"_id": {"$in": ids}}
        if collection is not None:
            query["collection"] = collection
        rows = [
            row
            async for raw in outbox.find(query, _RECORD_FIELDS)
            if (row := record_row(raw, settings)) is not None and row.time >= judging.start
        ]
        await asyncio.to_thread(store.add_records, rows)


async def _load_index(
    clients: OperatorClients,
    store: AuditStore,
    collection: str,
    floor: datetime,
    progress: Progress,
) -> None:
    """Index entries written for events since `floor`, then the window's other documents."""
    es = clients.es
    alias = clients.settings.es.alias_for(collection)
    query = {"range": {COMMITTED_AT_FIELD: {"gte": format_time(floor)}}}
    source = [DELETED_FIELD, DOCUMENT_FIELD, VERSION_FIELD]
    try:
        await es.indices.refresh(index=alias)  # what the indexer acknowledged becomes visible
        total = int((await es.count(index=alias, query=query))["count"])
        progress.start(f"reading Elasticsearch ({collection})", total)
        search_after: list[Any] | None = None
        while True:
            response = await es.search(
                index=alias,
                size=PAGE,
                sort=[{ID_FIELD: "asc"}],
                source_includes=source,
                version=True,
                search_after=search_after,
                query=query,
            )
            hits = response["hits"]["hits"]
            entries = [(str(h["_id"]), index_state(h)) for h in hits]
            await asyncio.to_thread(store.add_indexed, collection, entries)
            progress.advance(len(hits))
            if len(hits) < PAGE:
                break
            search_after = hits[-1]["sort"]
        # Documents of the window the scan did not return hold no version from the
        # window: look up what they hold instead (an older version, or nothing).
        for ids in store.not_indexed(collection, PAGE):
            response = await es.mget(index=alias, ids=ids, source_includes=source)
            found = [(str(d["_id"]), index_state(d)) for d in response["docs"] if d.get("found")]
            await asyncio.to_thread(store.add_indexed, collection, found)
    except NotFoundError:
        return  # no index yet: every document of the window is missing from it
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e


# --- judging -----------------------------------------------------------------------------


def _judge_events(
    store: AuditStore,
    judging: Judging,
    tally: Tally,
    progress: Progress,
    stop: threading.Event,
) -> None:
    progress.start("judging events", store.records())
    for record, copies in _paced(store.events(), progress, stop):
        verdict = judge_event(record.time, copies, judging)
        example = {
            "event_id": record.event_id,
            "collection": record.collection,
            "document_id": record.document_id,
            "version": record.version,
            "time": format_time(record.time),
        }
        if verdict.state is not EventState.PUBLISHED:
            tally.add(verdict.state.value, example=example)
        if verdict.extra_copies:
            where = [c.where for c in copies if not c.replayed]
            tally.add("extra_copies", verdict.extra_copies)
            tally.add(
                "duplicated",
                verdict.extra_copies,
                {**example, "copies": where, "why": f"{len(where)} original copies"},
            )
        if verdict.replayed:
            tally.add("replayed", verdict.replayed, example)


def _judge_unknown(
    store: AuditStore, judging: Judging, tally: Tally, stop: threading.Event
) -> None:
    for message in _paced(store.unknown_messages(), NoProgress(), stop):
        kind = judge_unknown(message.event_time, message.replayed, judging)
        example = {
            "event_id": message.event_id or None,
            "document_id": message.key,
            "version": message.version,
            "where": f"{message.topic}[{message.partition}]@{message.offset}",
            "time": format_time(message.event_time),
        }
        if kind is UnknownKind.UNEXPECTED:
            tally.add("unknown_events")
            tally.add(
                "duplicated", example={**example, "why": "no outbox record of the window has it"}
            )
        else:
            tally.add(kind.value, example=example)


def _judge_order(
    store: AuditStore, tally: Tally, progress: Progress, stop: threading.Event
) -> None:
    progress.start("judging order", store.document_streams())
    for topic, key, placed in _paced(store.streams(), progress, stop):
        for v in order_violations(placed):
            tally.add(
                "misordered",
                example={
                    "event_id": v.event_id,
                    "document_id": key,
                    "version": v.version,
                    "where": f"{topic}[{v.partition}]@{v.offset}",
                    "why": v.reason,
                },
            )


def _tally_document(
    tally: Tally,
    outcome: Outcome,
    *,
    collection: str,
    doc_id: str,
    truth: tuple[str, State | None],
    index: State | None,
) -> None:
    """Count one document's outcome; `truth` names what the index was held against."""
    if outcome is Outcome.IN_SYNC:
        return
    example = {
        "collection": collection,
        "document_id": doc_id,
        "kind": outcome.value,
        truth[0]: _state_text(truth[1]),
        "elasticsearch": _state_text(index),
    }
    tally.add(outcome.value, example=example)
    if outcome.is_drift:
        tally.add("drift", example=example)


def _judge_documents(
    store: AuditStore,
    judging: Judging,
    tally: Tally,
    progress: Progress,
    stop: threading.Event,
) -> None:
    """The window's documents; what only MongoDB can settle is queued with `add_ask`."""
    progress.start("judging documents", store.documents())
    for row in _paced(store.newest(), progress, stop):
        record = row.record
        settled = document_settled(
            record_time=record.time,
            acknowledged=row.acknowledged,
            in_kafka=row.in_kafka,
            judging=judging,
        )
        newest = State(record.version, record.deleted, record.content)
        outcome = judge_document(newest, row.index, settled=settled)
        if outcome is Outcome.ASK_MONGODB:
            assert row.index is not None
            store.add_ask(record.collection, record.document_id, row.index)
        else:
            _tally_document(
                tally,
                outcome,
                collection=record.collection,
                doc_id=record.document_id,
                truth=("newest_record", newest),
                index=row.index,
            )
    for collection, doc_id, index in _paced(store.orphans(), NoProgress(), stop):
        store.add_ask(collection, doc_id, index)


async def _judge_asks(
    clients: OperatorClients, store: AuditStore, judging: Judging, tally: Tally
) -> None:
    for collection, entries in store.asks(LOOKUP_BATCH):
        ids = [doc_id for doc_id, _ in entries]
        fields = {VERSION: 1, DELETED: 1, DOCUMENT: 1}
        current = {
            str(raw["_id"]): stored_state(raw)
            async for raw in clients.db[collection].find({"_id": {"$in": ids}}, fields)
        }
        for doc_id, index in entries:
            mongo = current.get(doc_id)
            outcome = judge_against_mongodb(mongo, index, judging)
            _tally_document(
                tally,
                outcome,
                collection=collection,
                doc_id=doc_id,
                truth=("mongodb", mongo),
                index=index,
            )


# --- the use case ------------------------------------------------------------------------


async def audit(
    clients: OperatorClients,
    *,
    since: timedelta | None = None,
    collection: str | None = None,
    grace: timedelta = DEFAULT_GRACE,
    settled: bool = False,
    progress: Progress | None = None,
    read_timeout_s: float = READ_IDLE_TIMEOUT_S,
) -> AuditReport:
    """Audit the outbox records of the last `since` (default: everything retained).

    `settled=True` is for a pipeline known to be idle: every record must be in Kafka
    and every document indexed, so what a live audit calls pending is a problem. Reading
    Kafka raises `RetriableError` when it made no progress for `read_timeout_s` (another
    producer's transaction open all that time).
    """
    progress = progress or NoProgress()
    started = time.monotonic()
    settings = clients.settings
    now = utc_now()
    retained_from = now - timedelta(days=settings.mongo.outbox_ttl_days) + EXPIRY_MARGIN
    start = retained_from if since is None else max(now - since, retained_from)
    clamped = since is not None and now - since < retained_from
    notes: list[str] = []
    position: datetime | None = None
    if settled:
        judging = Judging(start, JUDGE_ALL, require_ack=False)
    else:
        position = await relay_position(clients)
        judged_until = None if position is None else min(position, now) - grace
        judging = Judging(start, judged_until)
        if position is None:
            notes.append(
                f"relay {settings.relay.name!r} has no committed checkpoint: no record is "
                "judged lost yet"
            )
    window = AuditWindow(
        start=start,
        end=now,
        judged_until=judging.judged_until,
        relay_position=position,
        collection=collection,
        grace_s=0.0 if settled else grace.total_seconds(),
        settled=settled,
        clamped=clamped,
    )
    log.info("audit_started", **window.as_dict())
    tally = Tally()
    worker = _Worker()
    with AuditStore.temporary() as store:
        if not settled:
            # Before Elasticsearch is read: every offset committed here is in the index then.
            committed = await worker.run(_committed_blocking, settings)
            await worker.run(store.set_committed, committed)
            if not committed:
                notes.append(
                    f"the indexer group {settings.indexer.group_id!r} has committed no "
                    "offsets: no document is judged for drift yet"
                )
        unreadable = await _load_outbox(clients, store, start, collection, progress)
        if unreadable:
            notes.append(f"{unreadable} outbox records are off the contract and were skipped")
        topics = await worker.run(_event_topics_blocking, settings, collection)
        await worker.run(
            _load_kafka_blocking,
            settings,
            store,
            topics,
            start - CLOCK_MARGIN,
            progress=progress,
            stop=worker.stop,
            read_timeout_s=read_timeout_s,
        )
        await load_late_records(clients, store, judging, collection)
        prefix = settings.kafka.event_topic("")
        names = {t.removeprefix(prefix) for t in topics} | set(store.collections())
        for name in sorted(names):
            await _load_index(clients, store, name, start - CLOCK_MARGIN, progress)

        await worker.run(_judge_events, store, judging, tally, progress, worker.stop)
        await worker.run(_judge_unknown, store, judging, tally, worker.stop)
        await worker.run(_judge_order, store, tally, progress, worker.stop)
        await worker.run(_judge_documents, store, judging, tally, progress, worker.stop)
        await _judge_asks(clients, store, judging, tally)
        records, messages = store.records(), store.messages()
        documents, indexed = store.documents(), store.indexed()

    counts = tally.counts
    report = AuditReport(
        window=window,
        outbox_records=records,
        kafka_messages=messages,
        documents=documents,
        indexed_documents=indexed,
        lost=counts[EventState.LOST.value],
        extra_copies=counts["extra_copies"],
        unknown_events=counts["unknown_events"],
        misordered=counts["misordered"],
        drift=DriftCounts(**{k.value: counts[k.value] for k in DRIFT_KINDS}),
        replayed=counts["replayed"],
        pending=counts[EventState.PENDING.value],
        unindexed=counts[Outcome.UNINDEXED.value],
        recovered=counts[EventState.RECOVERED.value],
        outside_window=counts[UnknownKind.OUTSIDE_WINDOW.value],
        examples={k: tuple(v) for k, v in tally.examples.items()},
        notes=tuple(notes),
        read_s=time.monotonic() - started,
    )
    log.info("audit_finished", ok=report.ok, summary=report.counts_line())
    return report


async def audit_when_idle(
    settings: Settings,
    *,
    timeout_s: float,
    settle_s: float = 20.0,
    interval_s: float = 2.0,
    read_timeout_s: float = READ_IDLE_TIMEOUT_S,
) -> AuditReport:
    """Audit until the views agree, or until nothing moved for `settle_s`, or `timeout_s`.

    Every audit is a settled one (nothing may be pending). A read of Kafka held back by
    an open transaction is tried again until `timeout_s`. An agreeing audit ends the
    wait at once: the pipeline is idle and correct. Otherwise the last report is returned
    once the pipeline stopped moving (a real loss or drift) or the time is up (the
    pipeline is stuck, which the report shows as pending or drift).
    """
    deadline = time.monotonic() + timeout_s
    last_change = time.monotonic()
    previous: tuple[int, ...] | None = None
    async with open_clients(settings, app_name="outbox-audit") as clients:
        while True:
            try:
                report = await audit(clients, settled=True, read_timeout_s=read_timeout_s)
            except RetriableError as e:
                # A relay restarting (or its lease lost under load) can hold a transaction
                # open longer than one read waits: not idle yet. A transaction nobody
                # resolves still fails the wait, at `timeout_s`.
                if time.monotonic() >= deadline:
                    raise
                log.info("audit_waiting_for_kafka", error=str(e))
                await asyncio.sleep(interval_s)
                continue
            if report.ok:
                return report
            now = time.monotonic()
            if report.fingerprint() != previous:
                previous, last_change = report.fingerprint(), now
            if now - last_change >= settle_s or now >= deadline:
                return report
            await asyncio.sleep(interval_s)
