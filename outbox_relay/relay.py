"""`OutboxRelay`: the active relay's loop — change stream batches → Kafka transactions.

Resume order (each logged): the stored checkpoint — `stream` mode resumes the change
stream after its token, `recovering` mode (or a collection list that gained a
collection) recovers from the retained outbox (`outbox_relay.recovery`) — else, on a
first start, a recovery from every retained outbox record. Each batch of events and the
checkpoint after it commit in one Kafka transaction; while one batch commits on the
producer thread, the stream tail reads the next ones.

The rules live elsewhere, as plain code tested without servers: recovery windows,
per-document order and the skip window in `recovery.py`, refusals in `refusal.py`,
checkpoints in `checkpoint.py`. This module is the loop and its wiring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from bson import json_util
from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from infra.envelope import (
    CE_ID,
    CE_TRACEPARENT,
    EnvelopeEncoder,
    KafkaMessage,
    MalformedRecordError,
    headers_dict,
)
from infra.errors import FatalError, PipelineError, RetriableError
from infra.mongo import MongoClient, map_mongo_error, outbox_ttl_seconds
from infra.retry import retrying
from infra.settings import KafkaSettings, Settings
from infra.tracing import Tracing
from outbox_relay.backlog import oldest_time
from outbox_relay.change_stream import (
    StreamBatch,
    StreamTail,
    is_history_lost,
    open_stream,
    operation_time,
)
from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from outbox_relay.kafka_reader import read_checkpoint, read_published
from outbox_relay.ports import EventPublisher, LeaseCheckFailedError, TransactionAbortedError
from outbox_relay.progress import RelayState
from outbox_relay.recovery import (
    RecoveryPart,
    SkipWindow,
    VersionGate,
    collections_changed,
    duplicate_possible,
    find_missing,
    needs_recovery,
    recovery_parts,
    recovery_window,
    scan_outbox,
    skip_scanned,
    window_outlived_retention,
)
from outbox_relay.refusal import RefusalTracker, dead_letter_for
from outbox_relay.scope import CollectionScope

log = structlog.get_logger(__name__)

# Consecutive failures without any committed batch are retried this long, then the
# relay stops (non-zero exit) and its supervisor restarts it.
GIVE_UP_AFTER_S = 300.0
# Events the stream tail may buffer while a recovery reads back and scans. Past that it
# stops reading; if the stream then loses its position, the next recovery starts from
# where this one's scan began.
RECOVERY_BUFFER_EVENTS = 50_000


class HistoryLostError(RetriableError):
    """The change stream cannot resume from the checkpoint: recover from the outbox."""


def record_time(raw: Mapping[str, Any]) -> datetime | None:
    """The outbox `time` of a stored record, timezone-aware; None if it has none."""
    time = raw.get("time")
    if not isinstance(time, datetime):
        return None
    return time if time.tzinfo else time.replace(tzinfo=UTC)


def failed_dependency(error: BaseException) -> str | None:
    """Which dependency a failed segment points at, for readiness (None: neither)."""
    if isinstance(error, PyMongoError):
        return "mongodb"
    if isinstance(error, LeaseCheckFailedError):
        return None  # the lease, not a dependency: the service stands by again
    if isinstance(error, TransactionAbortedError) and error.refused:
        return None  # Kafka answered: it refused a record, which goes to the DLQ next
    if isinstance(error, HistoryLostError):
        return None  # MongoDB answered: the relay recovers
    if isinstance(error, RetriableError):
        return "kafka"  # every other retriable error of the loop comes from Kafka
    return None


def message_for(
    raw: Mapping[str, Any], encoder: EnvelopeEncoder, kafka: KafkaSettings
) -> KafkaMessage:
    """The Kafka message of a stored record; a dead letter if the record is malformed.

    A poison record must not stop the relay: it goes to the DLQ with its stored form,
    unless that is larger than Kafka takes (then without a value; the outbox keeps it).
    """
    try:
        return encoder.encode(dict(raw))
    except MalformedRecordError as error:
        collection = raw.get("collection")
        stored = json_util.dumps(raw).encode()
        event_id = str(raw.get("_id", ""))
        bad = KafkaMessage(
            topic=kafka.event_topic(collection) if isinstance(collection, str) else "",
            key=str(raw.get("document_id", "")).encode() or None,
            value=stored if len(stored) <= kafka.message_max_bytes else None,
            # Its id, so `outbox dlq` and a recovery's read-back know which record it is.
            headers=[(CE_ID, event_id.encode())],
            event_id=event_id,
            collection=collection if isinstance(collection, str) else "",
        )
        return dead_letter_for(bad, f"malformed outbox record: {error}", kafka.dlq_topic)


class OutboxRelay:
    """Publishes the outbox while this process holds the lease (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        client: MongoClient,
        state: RelayState,
        *,
        still_leader: Callable[[], bool],
        publisher: EventPublisher,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._relay = settings.relay
        self._scope = CollectionScope.of(settings.relay.collections)
        self._tracing = tracing or Tracing()
        self._client = client
        self._outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
        self._state = state
        self._still_leader = still_leader
        self._publisher = publisher
        self._encoder = EnvelopeEncoder(settings.kafka.event_topic)
        self._margin = timedelta(seconds=settings.relay.recovery_margin_seconds)
        self._refusals = RefusalTracker(settings.kafka.dlq_topic)
        self._committed = Checkpoint.initial(self._relay.name, tuple(self._scope.as_setting()))
        self._tip = self._committed  # last handed to the producer
        self._commits = 0

    async def run(self) -> None:
        """Fence older holders, load the checkpoint, publish until cancelled or fatal."""
        try:
            stored = await self._start()
            if stored is None:
                log.info("relay_resumed_from_outbox_start", relay=self._relay.name)
            else:
                log.info(
                    "relay_resumed_from_checkpoint",
                    relay=self._relay.name,
                    mode=stored.mode.value,
                    cluster_time=str(stored.cluster_time),
                    last_event_id=stored.last_event_id,
                    collections=stored.collections,
                )
                if stored.collections is None:  # format 1: it ran with today's list
                    stored = replace(stored, collections=tuple(self._scope.as_setting()))
                self._committed = stored
            self._state.checkpoint_loaded(stored)
            while True:
                async for attempt in retrying(
                    "relay_resume", attempts=0, max_delay_s=GIVE_UP_AFTER_S, max_wait_s=2.0
                ):
                    with attempt:
                        await self._segment()
        finally:
            await self._publisher.close()

    async def _start(self) -> Checkpoint | None:
        stored: Checkpoint | None = None
        async for attempt in retrying("relay_start", attempts=0, max_delay_s=GIVE_UP_AFTER_S):
            with attempt:
                try:
                    await self._publisher.start()
                    stored = await read_checkpoint(self._settings.kafka, self._relay.name)
                except RetriableError as e:
                    self._state.dependency_down("kafka", str(e))
                    raise
                self._state.dependency_up("kafka")
        return stored

    async def _segment(self) -> None:
        """Run from the last committed checkpoint until something fails.

        Returns (so a fresh retry budget starts) when the failure came after progress;
        raises when nothing could be committed, so the retry policy backs off.
        """
        commits_before = self._commits
        self._tip = self._committed
        try:
            try:
                cp = self._committed
                if needs_recovery(cp, self._scope):
                    await self._recover(cp)
                else:
                    await self._stream(cp)
            except HistoryLostError:
                self._state.history_lost()
                cp = self._committed
                log.error(  # noqa: TRY400 - an expected condition: no traceback wanted
                    "change_stream_history_lost",
                    relay=self._relay.name,
                    checkpoint_mode=cp.mode.value,
                    checkpoint_cluster_time=str(cp.cluster_time),
                    recovering_from=str(recover_from(cp)),
                )
                if cp.mode is not CheckpointMode.STREAM:
                    raise  # a recovery's own stream: the next segment recovers from cp
                await self._recover(cp)
        except PyMongoError as e:
            mapped = map_mongo_error(e)
            if isinstance(mapped, FatalError):
                raise mapped from e
            failure: PipelineError = mapped
            cause: BaseException = e
        except RetriableError as e:
            failure = e
            cause = e
        else:  # pragma: no cover - the loops only return by raising
            return
        dependency = failed_dependency(cause)
        if dependency is not None:
            self._state.dependency_down(dependency, str(failure))
        if self._commits == commits_before:
            raise failure from cause
        log.warning(
            "relay_rewound",
            relay=self._relay.name,
            error=str(failure),
            cluster_time=str(self._committed.cluster_time),
        )

    # --- the change stream -----------------------------------------------------------

    @asynccontextmanager
    async def _tail(
        self,
        *,
        resume_after: dict[str, Any] | None = None,
        start_at: Timestamp | None = None,
        position: Timestamp | None = None,
        capacity_events: int,
    ) -> AsyncIterator[StreamTail]:
        """The change stream, opened and read by a `StreamTail` until the block ends."""
        async with self._client.start_session() as session:
            try:
                stream = await open_stream(
                    self._outbox, self._relay, session, resume_after=resume_after, start_at=start_at
                )
            except PyMongoError as e:
                if is_history_lost(e):
                    raise HistoryLostError(str(e)) from e
                raise
            log.info(
                "change_stream_opened",
                relay=self._relay.name,
                resume_after=resume_after is not None,
                start_at=str(start_at),
            )
            tail = StreamTail(
                stream,
                session,
                self._relay,
                capacity_events=capacity_events,
                position=position or start_at,
            )
            async with stream:
                tail.start()
                try:
                    yield tail
                finally:
                    await tail.stop()

    async def _stream(self, cp: Checkpoint) -> None:
        """Resume the change stream after the checkpoint's token."""
        self._tip = cp
        capacity = 2 * self._relay.batch_max_events
        async with self._tail(
            resume_after=cp.resume_token, position=cp.cluster_time, capacity_events=capacity
        ) as tail:
            await self._publish_stream(tail, None)

    async def _publish_stream(self, tail: StreamTail, skip: SkipWindow | None) -> None:
        """Publish the stream's batches, one transaction each, until something fails."""
        pending: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    batch = await tail.next()
                except PyMongoError as e:
                    if is_history_lost(e):
                        raise HistoryLostError(str(e)) from e
                    raise
                if not batch.changes and batch.resume_token == self._tip.resume_token:
                    continue  # a heartbeat that moved nothing
                # Past the end of a recovery's scan the window is None: normal checkpoints.
                messages, checkpoint, skip = self._prepare(batch, skip)
                last_time = (
                    record_time(batch.changes[-1]["fullDocument"]) if batch.changes else None
                )
                if pending is not None:
                    await pending
                self._tip = checkpoint
                pending = asyncio.create_task(
                    self._commit(
                        messages,
                        checkpoint,
                        heartbeat=not batch.changes,
                        last_record_time=last_time,
                    )
                )
        finally:
            if pending is not None:
                await asyncio.wait([pending])
                if not pending.cancelled() and pending.exception() is not None:
                    log.debug("pending_commit_failed", error=str(pending.exception()))

    def _prepare(
        self, batch: StreamBatch, skip: SkipWindow | None
    ) -> tuple[list[KafkaMessage], Checkpoint, SkipWindow | None]:
        """The messages of a stream batch, the checkpoint after them, the next skip window."""
        changes, next_skip = skip_scanned(batch.changes, batch.cluster_time, skip)
        encode = self._encode
        messages = [encode(change["fullDocument"]) for change in changes]
        if self._refusals.active:
            messages = [self._refusals.apply(m) for m in messages]
        now = datetime.now(UTC)
        last_id = messages[-1].event_id if messages else None
        if next_skip is not None:
            # Still inside the recovery window: a restart must redo the recovery.
            checkpoint = self._tip.recovering(
                last_event_id=last_id, published=len(messages), now=now
            )
        else:
            checkpoint = self._tip.advanced(
                resume_token=batch.resume_token,
                # A heartbeat whose position is not known yet keeps the last known one.
                cluster_time=batch.cluster_time or self._tip.cluster_time,
                last_event_id=last_id,
                published=len(messages),
                now=now,
            )
        return messages, checkpoint, next_skip

    def _encode(self, raw: Mapping[str, Any]) -> KafkaMessage:
        return message_for(raw, self._encoder, self._settings.kafka)

    # --- history loss, first start, a collection added ---------------------------------

    async def _recover(self, cp: Checkpoint) -> None:
        """Re-publish retained outbox records Kafka lacks, then stream on (see recovery.py)."""
        since = recover_from(cp)
        if collections_changed(cp, self._scope):
            log.warning(
                "relay_collections_changed",
                relay=self._relay.name,
                checkpoint_collections=cp.collections,
                collections=self._scope.as_setting(),
            )
        parts = recovery_parts(cp, self._scope, since)
        # Batches of this scan: a crash redoes the same recovery.
        self._tip = cp.recovery_from(since, collections=cp.collections)
        t0 = await operation_time(self._client)
        async with self._tail(start_at=t0, capacity_events=RECOVERY_BUFFER_EVENTS) as tail:
            skip_ids: set[str] = set()
            for part in parts:
                skip_ids |= await self._recover_part(part)
            t1 = await operation_time(self._client)
            # Everything committed before T0 is in Kafka now: a retry starts from there.
            done = self._tip.recovery_from(
                t0.as_datetime(), collections=tuple(self._scope.as_setting())
            ).recovering(last_event_id=None, published=0, now=datetime.now(UTC))
            self._tip = done
            await self._commit([], done, heartbeat=True)
            log.warning(
                "outbox_recovery_scanned",
                relay=self._relay.name,
                recover_from=str(since),
                resume_at=str(t0),
                next_recovery_from=str(done.recover_from),
            )
            await self._publish_stream(tail, SkipWindow(skip_ids, until=t1))

    async def _recover_part(self, part: RecoveryPart) -> set[str]:
        """Read back and scan one part; returns the ids the stream must not publish again."""
        oldest = await oldest_time(self._outbox, part.scope.mongo_filter())
        window = recovery_window(part.recover_from, oldest, self._margin)
        log.warning(
            "outbox_recovery_started",
            relay=self._relay.name,
            collections=part.scope.describe(),
            recover_from=str(part.recover_from),
            scan_since=str(None if window is None else window.scan_since),
            readback_since=str(None if window is None else window.readback_since),
            oldest_retained=str(oldest),
        )
        if window is None:
            return set()  # nothing retained
        ttl_s = await outbox_ttl_seconds(self._client, self._settings.mongo)
        ttl = None if ttl_s is None else timedelta(seconds=ttl_s)
        now = datetime.now(UTC)
        if window_outlived_retention(window.scan_since, oldest, now=now, ttl=ttl):
            log.error(
                "outbox_recovery_window_expired",
                relay=self._relay.name,
                collections=part.scope.describe(),
                scan_since=str(window.scan_since),
                oldest_retained=str(oldest),
                ttl_seconds=ttl_s,
                reason="records older than the oldest retained one may have expired unpublished",
            )
        published = await read_published(self._settings.kafka, part.scope, window.readback_since)
        skip = set(published.ids)
        gate = VersionGate(published.versions)
        counts = {"published": 0, "filled": 0, "in_kafka": len(published.ids)}
        async for raws in scan_outbox(
            self._outbox, window.scan_since, part.scope, self._relay.batch_max_events
        ):
            fresh = [raw for raw in raws if str(raw.get("_id")) not in skip]
            missing = gate.missing(fresh)
            found = await find_missing(self._outbox, missing, window.scan_since)
            found = [raw for raw in found if str(raw.get("_id")) not in skip]
            admitted = gate.fill(fresh, found)
            counts["filled"] += len(found)
            messages = []
            last_time: datetime | None = None
            for raw in admitted:
                event_id = str(raw.get("_id"))
                skip.add(event_id)
                messages.append(self._refusals.apply(self._encode(raw)))
                last_time = record_time(raw)
                if last_time is not None and duplicate_possible(last_time, part.recover_from):
                    self._duplicate_possible(raw)
            if messages:
                checkpoint = self._tip.recovering(
                    last_event_id=messages[-1].event_id,
                    published=len(messages),
                    now=datetime.now(UTC),
                )
                self._tip = checkpoint
                await self._commit(messages, checkpoint, last_record_time=last_time)
                counts["published"] += len(messages)
        log.info("outbox_recovery_part_done", relay=self._relay.name, **counts)
        return skip

    def _duplicate_possible(self, raw: Mapping[str, Any]) -> None:
        self._state.duplicate_possible()
        log.warning(
            "duplicate_possible",
            relay=self._relay.name,
            event_id=str(raw.get("_id")),
            collection=raw.get("collection"),
            document_id=raw.get("document_id"),
            reason="older than the checkpoint and not found in Kafka",
        )

    # --- committing ------------------------------------------------------------------

    def _trace_published(self, messages: list[KafkaMessage], started_ns: int) -> None:
        """One span per event under the write's trace, spanning its Kafka transaction."""
        ended_ns = time.time_ns()
        for message in messages:
            if message.dead_letter is not None:
                continue
            self._tracing.record_span(
                "outbox.publish",
                parent=headers_dict(list(message.headers)).get(CE_TRACEPARENT),
                start_ns=started_ns,
                end_ns=ended_ns,
                attributes={"outbox.event_id": message.event_id, "outbox.topic": message.topic},
            )

    async def _commit(
        self,
        messages: list[KafkaMessage],
        checkpoint: Checkpoint,
        *,
        heartbeat: bool = False,
        last_record_time: datetime | None = None,
    ) -> None:
        topics = {m.topic for m in messages if m.dead_letter is None}
        if topics:
            await self._publisher.ensure_event_topics(topics)
        started = time.perf_counter()
        started_ns = time.time_ns()
        try:
            outcome = await self._publisher.commit(
                messages, checkpoint, self._still_leader, self._refusals.isolate
            )
        except TransactionAbortedError as e:
            self._state.aborted()
            self._refusals.learn(e.refused)
            log.warning(
                "transaction_aborted",
                relay=checkpoint.relay,
                events=len(messages),
                refused=len(e.refused),
                error=str(e),
            )
            raise
        self._committed = checkpoint
        self._commits += 1
        self._state.committed(
            checkpoint,
            published=outcome.by_collection,
            dead_lettered=len(outcome.dead_lettered),
            last_record_time=last_record_time,
            heartbeat=heartbeat,
            seconds=time.perf_counter() - started,
        )
        if self._tracing.enabled:
            self._trace_published(messages, started_ns)
        self._refusals.committed((m.event_id for m in messages), outcome.dead_lettered)
        for event_id in outcome.dead_lettered:
            log.error(
                "event_dead_lettered",
                relay=checkpoint.relay,
                event_id=event_id,
                topic=self._settings.kafka.dlq_topic,
            )
        log.debug(
            "batch_committed",
            relay=checkpoint.relay,
            events=outcome.published,
            mode=checkpoint.mode.value,
            cluster_time=str(checkpoint.cluster_time),
            heartbeat=heartbeat,
        )


def recover_from(cp: Checkpoint) -> datetime | None:
    """Where a recovery from `cp` starts: its own `recover_from`, or its oplog time."""
    return cp.recover_from if cp.mode is CheckpointMode.RECOVERING else cp.wall_time
