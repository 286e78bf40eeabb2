"""`OutboxRelay`: the active relay's loop — change stream batches → Kafka transactions.

Resume order (each logged): the stored checkpoint (`stream` mode resumes the change
stream after its token; `recovering` mode redoes the recovery), else — first start — a
recovery from every retained outbox record. Each batch of events and the checkpoint
after it commit in one Kafka transaction; while one batch commits on the producer
thread, the next one is read from the change stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from bson import json_util
from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from infra.envelope import (
    CE_TRACEPARENT,
    EnvelopeEncoder,
    KafkaMessage,
    MalformedRecordError,
    headers_dict,
)
from infra.errors import FatalError, PipelineError, RetriableError
from infra.mongo import MongoClient, map_mongo_error
from infra.retry import retrying
from infra.settings import KafkaSettings, Settings
from infra.tracing import Tracing
from outbox_relay.change_stream import (
    StreamBatch,
    is_history_lost,
    open_stream,
    operation_time,
    read_batch,
)
from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from outbox_relay.kafka_reader import published_ids, read_checkpoint
from outbox_relay.progress import RelayState
from outbox_relay.publisher import (
    KafkaEventPublisher,
    LeaseCheckFailedError,
    TransactionAbortedError,
    dead_letter_for,
)
from outbox_relay.recovery import (
    SkipWindow,
    duplicate_possible,
    scan_outbox,
    scan_since,
    skip_scanned,
)

log = structlog.get_logger(__name__)

# Consecutive failures without any committed batch are retried this long, then the
# relay stops (non-zero exit) and its supervisor restarts it.
GIVE_UP_AFTER_S = 300.0


class HistoryLostError(RetriableError):
    """The change stream cannot resume from the checkpoint: recover from the outbox."""


def record_time(raw: dict[str, Any]) -> datetime | None:
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
    if isinstance(error, RetriableError):
        return "kafka"  # every other retriable error of the loop comes from Kafka
    return None


def message_for(
    raw: dict[str, Any], encoder: EnvelopeEncoder, kafka: KafkaSettings
) -> KafkaMessage:
    """The Kafka message of a stored record; a dead letter if the record is malformed.

    A poison record must not stop the relay: it goes to the DLQ with its stored form.
    """
    try:
        return encoder.encode(raw)
    except MalformedRecordError as error:
        collection = raw.get("collection")
        bad = KafkaMessage(
            topic=kafka.event_topic(collection) if isinstance(collection, str) else "",
            key=str(raw.get("document_id", "")).encode() or None,
            value=json_util.dumps(raw).encode(),
            headers=[],
            event_id=str(raw.get("_id", "")),
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
        still_leader: Callable[[], bool],
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._client = client
        self._outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
        self._state = state
        self._still_leader = still_leader
        self._publisher = KafkaEventPublisher(settings)
        self._encoder = EnvelopeEncoder(settings.kafka.event_topic)
        self._margin = timedelta(seconds=settings.relay.recovery_margin_seconds)
        self._committed = Checkpoint.initial(settings.relay.name)  # last committed
        self._tip = self._committed  # last handed to the producer
        self._refused: dict[str, str] = {}  # event id → why Kafka refused it for good
        self._suspects: set[str] = set()  # in a produce request Kafka refused
        self._commits = 0

    async def run(self) -> None:
        """Fence older holders, load the checkpoint, publish until cancelled or fatal."""
        relay = self._settings.relay
        try:
            async for attempt in retrying("relay_start", attempts=0, max_delay_s=GIVE_UP_AFTER_S):
                with attempt:
                    try:
                        await self._publisher.start()
                        stored = await read_checkpoint(self._settings.kafka, relay.name)
                    except RetriableError as e:
                        self._state.dependency_down("kafka", str(e))
                        raise
                    self._state.dependency_up("kafka")
            if stored is None:
                log.info("relay_resumed_from_outbox_start", relay=relay.name)
            else:
                log.info(
                    "relay_resumed_from_checkpoint",
                    relay=relay.name,
                    mode=stored.mode.value,
                    cluster_time=str(stored.cluster_time),
                    last_event_id=stored.last_event_id,
                )
                self._committed = stored
                self._state.position_reached(stored)
            while True:
                async for attempt in retrying(
                    "relay_resume", attempts=0, max_delay_s=GIVE_UP_AFTER_S, max_wait_s=2.0
                ):
                    with attempt:
                        await self._segment()
        finally:
            await self._publisher.close()

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
                if cp.mode is CheckpointMode.RECOVERING:
                    await self._recover(cp)
                else:
                    await self._stream(cp, resume_after=cp.resume_token)
            except HistoryLostError:
                self._state.history_lost()
                cp = self._committed
                log.error(  # noqa: TRY400 - an expected condition: no traceback wanted
                    "change_stream_history_lost",
                    relay=self._settings.relay.name,
                    checkpoint_cluster_time=str(cp.cluster_time),
                    recovering_from=str(cp.wall_time),
                )
                await self._recover(
                    Checkpoint(
                        relay=cp.relay,
                        mode=CheckpointMode.RECOVERING,
                        resume_token=cp.resume_token,
                        cluster_time=cp.cluster_time,
                        recover_from=cp.wall_time,
                        last_event_id=cp.last_event_id,
                        events_total=cp.events_total,
                    )
                )
        except PyMongoError as e:
            mapped = map_mongo_error(e)
            if isinstance(mapped, FatalError):
                raise mapped from e
            failure: PipelineError = mapped
            cause: BaseException = e
        except RetriableError as e:
            failure = e
            cause = e
        else:  # pragma: no cover - _stream only returns by raising
            return
        dependency = failed_dependency(cause)
        if dependency is not None:
            self._state.dependency_down(dependency, str(failure))
        if self._commits == commits_before:
            raise failure from cause
        log.warning(
            "relay_rewound",
            relay=self._settings.relay.name,
            error=str(failure),
            cluster_time=str(self._committed.cluster_time),
        )

    # --- history loss and first start ------------------------------------------------

    async def _recover(self, cp: Checkpoint) -> None:
        """Re-publish retained outbox records Kafka lacks, then stream on (see recovery.py)."""
        relay = self._settings.relay
        t0 = await operation_time(self._client)
        since = scan_since(cp.recover_from, self._margin)
        seen = await published_ids(self._settings.kafka, relay.collections, since)
        log.warning(
            "outbox_recovery_started",
            relay=relay.name,
            recover_from=str(cp.recover_from),
            scan_since=str(since),
            already_in_kafka=len(seen),
        )
        self._tip = cp
        scanned: set[str] = set()
        published = 0
        async for raws in scan_outbox(
            self._outbox, since, relay.collections, relay.batch_max_events
        ):
            messages: list[KafkaMessage] = []
            last_time: datetime | None = None
            for raw in raws:
                event_id = str(raw.get("_id"))
                if event_id in seen or event_id in scanned:
                    continue
                scanned.add(event_id)
                message = self._with_refusal(self._encode(raw))
                messages.append(message)
                last_time = record_time(raw)
                if last_time is not None and duplicate_possible(last_time, cp.recover_from):
                    self._state.duplicate_possible()
                    log.error(
                        "duplicate_possible",
                        relay=relay.name,
                        event_id=event_id,
                        collection=raw.get("collection"),
                        document_id=raw.get("document_id"),
                        reason="older than the checkpoint and not found in Kafka",
                    )
            if messages:
                checkpoint = self._tip.recovering(
                    last_event_id=messages[-1].event_id,
                    published=len(messages),
                    now=datetime.now(UTC),
                )
                self._tip = checkpoint
                await self._commit(messages, checkpoint, last_record_time=last_time)
                published += len(messages)
        t1 = await operation_time(self._client)
        log.warning(
            "outbox_recovery_scanned",
            relay=relay.name,
            published=published,
            skipped_already_in_kafka=len(seen),
            resume_at=str(t0),
        )
        await self._stream(self._committed, start_at=t0, skip=SkipWindow(scanned | seen, until=t1))

    # --- the change stream -----------------------------------------------------------

    async def _stream(
        self,
        base: Checkpoint,
        *,
        resume_after: dict[str, Any] | None = None,
        start_at: Timestamp | None = None,
        skip: SkipWindow | None = None,
    ) -> None:
        relay = self._settings.relay
        self._tip = base
        pending: asyncio.Task[None] | None = None
        async with self._client.start_session() as session:
            try:
                stream = await open_stream(
                    self._outbox, relay, session, resume_after=resume_after, start_at=start_at
                )
            except PyMongoError as e:
                if is_history_lost(e):
                    raise HistoryLostError(str(e)) from e
                raise
            log.info(
                "change_stream_opened",
                relay=relay.name,
                resume_after=resume_after is not None,
                start_at=str(start_at),
                recovering=skip is not None,
            )
            try:
                async with stream:
                    heartbeat_due = time.monotonic() + relay.heartbeat_seconds
                    while True:
                        try:
                            batch = await read_batch(
                                stream, session, relay, heartbeat_due=heartbeat_due
                            )
                        except PyMongoError as e:
                            if is_history_lost(e):
                                raise HistoryLostError(str(e)) from e
                            raise
                        if not batch.changes and batch.resume_token == self._tip.resume_token:
                            heartbeat_due = time.monotonic() + relay.heartbeat_seconds
                            continue
                        # Past the end of the scan the window is None: normal checkpoints.
                        messages, checkpoint, skip = self._prepare(batch, skip)
                        last_time = (
                            record_time(batch.changes[-1]["fullDocument"])
                            if batch.changes
                            else None
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
                        heartbeat_due = time.monotonic() + relay.heartbeat_seconds
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
        if self._refused:
            messages = [self._with_refusal(m) for m in messages]
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
                cluster_time=batch.cluster_time,
                last_event_id=last_id,
                published=len(messages),
                now=now,
            )
        return messages, checkpoint, next_skip

    def _encode(self, raw: dict[str, Any]) -> KafkaMessage:
        return message_for(raw, self._encoder, self._settings.kafka)

    # --- committing ------------------------------------------------------------------

    def _with_refusal(self, message: KafkaMessage) -> KafkaMessage:
        reason = self._refused.get(message.event_id)
        if reason is None or message.dead_letter is not None:
            return message
        return dead_letter_for(message, reason, self._settings.kafka.dlq_topic)

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
                messages, checkpoint, self._still_leader, frozenset(self._suspects)
            )
        except TransactionAbortedError as e:
            self._state.aborted()
            for event_id, reason in e.refused.items():
                # A refused produce request fails every event in it: only an event that
                # was alone in its request is surely the one at fault; isolate the others.
                if len(e.refused) == 1 or event_id in self._suspects:
                    self._refused[event_id] = reason
                else:
                    self._suspects.add(event_id)
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
        if self._suspects:
            self._suspects.difference_update(m.event_id for m in messages)
        for event_id in outcome.dead_lettered:
            self._refused.pop(event_id, None)
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
