"""The indexer service: Kafka `outbox.event.*` → Elasticsearch, idempotent, at least once.

One loop, one batch at a time: poll a batch (size or time bound), decode and project it
(`indexer.projection`), apply it with one bulk request, dead-letter the poison events,
then commit the batch's offsets. Offsets move only after Elasticsearch acknowledged every
event of the batch (a 409 counts: the index already holds that version or a newer one)
or the DLQ acknowledged its dead letter. Retriable failures retry the same batch with
jittered backoff for as long as it takes; nothing is dropped and the process stays up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from confluent_kafka import KafkaException

from indexer.consumer import ConsumedMessage, KafkaEventSource, TopicPartitionKey
from indexer.dlq import KafkaDeadLetterWriter
from indexer.projection import (
    IndexAction,
    ProjectionError,
    action_for,
    check_indexable,
    latest_per_document,
)
from indexer.sink import ElasticsearchSink, ItemResult
from indexer.state import IndexerState
from infra.dlq import DeadLetter
from infra.elastic import elastic_client
from infra.envelope import EnvelopeError, OutboxRecord
from infra.errors import RetriableError
from infra.kafka import ensure_topics
from infra.retry import retrying
from infra.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Retry until it works: each pause is bounded, the total is not.
_FOREVER_S = 10.0**9
MAX_BACKOFF_S = 5.0
# On shutdown, the batch in flight gets this long to finish and commit before it is
# abandoned (uncommitted, hence redelivered to whoever consumes the partition next).
SHUTDOWN_GRACE_S = 5.0


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C `traceparent` (version-traceid-parentid-flags)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        return parts[1]
    return None


@dataclass(frozen=True, slots=True)
class _Item:
    """One decoded event on its way to Elasticsearch."""

    action: IndexAction
    message: ConsumedMessage
    record: OutboxRecord


@dataclass
class _Batch:
    """One polled batch and what became of each message."""

    messages: list[ConsumedMessage]
    items: list[_Item] = field(default_factory=list)  # still to be acknowledged by ES
    letters: list[DeadLetter] = field(default_factory=list)  # still to be acknowledged by the DLQ
    applied: int = 0
    already_applied: int = 0
    dead_lettered: int = 0

    def next_offsets(self) -> dict[TopicPartitionKey, int]:
        offsets: dict[TopicPartitionKey, int] = {}
        for m in self.messages:
            key = m.topic_partition
            offsets[key] = max(offsets.get(key, 0), m.offset + 1)
        return offsets


def _event_context(message: ConsumedMessage, record: OutboxRecord | None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
    }
    if record is not None:
        context.update(
            event_id=record.event_id,
            collection=record.collection,
            document_id=record.document_id,
            version=record.version,
            trace_id=trace_id_of(record.traceparent),
        )
    return context


def _describe(messages: list[ConsumedMessage]) -> list[str]:
    """`topic[partition]@first-last` per partition of a batch."""
    ranges: dict[TopicPartitionKey, tuple[int, int]] = {}
    for m in messages:
        low, high = ranges.get(m.topic_partition, (m.offset, m.offset))
        ranges[m.topic_partition] = (min(low, m.offset), max(high, m.offset))
    return [f"{t}[{p}]@{low}-{high}" for (t, p), (low, high) in sorted(ranges.items())]


def dead_letter_for(message: ConsumedMessage, error: str) -> DeadLetter:
    """The DLQ form of a consumed message: original key, value and headers kept."""
    return DeadLetter(
        key=message.key,
        value=message.value,
        original_headers=[(k, v or b"") for k, v in message.headers],
        error=error,
        stage="indexer",
        source_topic=message.topic,
        source_partition=message.partition,
        source_offset=message.offset,
    )


class Indexer:
    """Runs the consume → bulk → dead-letter → commit loop until cancelled."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: KafkaEventSource,
        sink: ElasticsearchSink,
        dead_letters: KafkaDeadLetterWriter,
        state: IndexerState,
    ) -> None:
        self._settings = settings
        self._source = source
        self._sink = sink
        self._dead_letters = dead_letters
        self._state = state
        self._topic_prefix = settings.kafka.event_topic("")
        # Confirmed commits land in the source's dict from the commit callback.
        state.committed_offsets = source.committed
        self._dlq_topic_ready = False

    async def run(self) -> None:
        await self._in_thread(self._source.subscribe)
        try:
            while True:
                messages = await self._in_thread(
                    self._source.poll_batch,
                    self._settings.indexer.batch_max_events,
                    self._settings.indexer.batch_max_ms / 1000,
                )
                if messages:
                    await self._process_with_grace(messages)
        finally:
            self._dead_letters.close()
            await asyncio.to_thread(self._source.close)
            await asyncio.to_thread(self._dead_letters.shutdown)

    async def _process_with_grace(self, messages: list[ConsumedMessage]) -> None:
        task = asyncio.ensure_future(self._process(_Batch(messages)))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_S)
            if done:
                log.info("batch_finished_on_shutdown", events=len(messages))
            else:
                log.warning("batch_abandoned_on_shutdown", events=len(messages))
                task.cancel()
                await asyncio.wait({task})
            raise

    async def _process(self, batch: _Batch) -> None:
        # Every line logged for this batch (retries included) says which messages it holds.
        with structlog.contextvars.bound_contextvars(batch=_describe(batch.messages)):
            await self._process_bound(batch)

    async def _process_bound(self, batch: _Batch) -> None:
        started = asyncio.get_running_loop().time()
        self._state.events_consumed += len(batch.messages)
        await self._project(batch)
        if batch.items:
            await self._retry_forever("es_bulk", lambda: self._apply(batch))
        if batch.letters:
            await self._retry_forever("dlq_write", lambda: self._write_dead_letters(batch))
        sent = await self._in_thread(self._source.commit, batch.next_offsets())
        self._record_progress(batch)
        log.info(
            "batch_indexed",
            events=len(batch.messages),
            applied=batch.applied,
            already_applied=batch.already_applied,
            dead_lettered=batch.dead_lettered,
            commit_sent_partitions=len(sent),
            duration_ms=round((asyncio.get_running_loop().time() - started) * 1000, 1),
        )

    async def _project(self, batch: _Batch) -> None:
        """Decode every message into an index action, or a dead letter for poison."""
        now = datetime.now(UTC)
        aliases: dict[str, str] = {}
        for message in batch.messages:
            record: OutboxRecord | None = None
            try:
                record = OutboxRecord.from_kafka(
                    key=message.key, value=message.value, headers=message.headers
                )
                check_indexable(
                    record, topic_collection=message.topic.removeprefix(self._topic_prefix)
                )
            except (EnvelopeError, ProjectionError) as e:
                self._poison(batch, message, record, str(e))
                continue
            alias = aliases.get(record.collection)
            if alias is None:
                alias = await self._ensure_index(record.collection)
                aliases[record.collection] = alias
            action = action_for(record, alias=alias, indexed_at=now)
            batch.items.append(_Item(action, message, record))

    async def _ensure_index(self, collection: str) -> str:
        return await self._retry_forever(
            "es_index_create", lambda: self._sink.ensure_index(collection)
        )

    def _poison(
        self, batch: _Batch, message: ConsumedMessage, record: OutboxRecord | None, error: str
    ) -> None:
        batch.letters.append(dead_letter_for(message, error))
        log.warning("event_dead_lettered", error=error, **_event_context(message, record))

    async def _apply(self, batch: _Batch) -> None:
        """One bulk request for the newest action per document; raise to retry the rest."""
        by_action = {id(item.action): item for item in batch.items}
        latest = [
            by_action[id(a)]
            for a in latest_per_document(item.action for item in batch.items).values()
        ]
        batch.already_applied += len(batch.items) - len(latest)
        batch.items = latest
        outcomes = await self._sink.bulk([item.action for item in latest])
        retry: list[_Item] = []
        retry_error = ""
        for item, outcome in zip(latest, outcomes, strict=True):
            if outcome.result is ItemResult.APPLIED:
                batch.applied += 1
            elif outcome.result is ItemResult.ALREADY_APPLIED:
                batch.already_applied += 1
            elif outcome.result is ItemResult.POISON:
                self._poison(batch, item.message, item.record, outcome.error)
            else:
                retry.append(item)
                retry_error = retry_error or outcome.error
                self._sink.forget(item.action.alias)
        # What succeeded is not sent again; raising hands the pause to the retry policy.
        batch.items = retry
        if retry:
            raise RetriableError(f"{len(retry)} bulk items must be retried: {retry_error}")

    async def _write_dead_letters(self, batch: _Batch) -> None:
        if not self._dlq_topic_ready:
            try:
                await ensure_topics(self._settings.kafka, {self._dead_letters.topic: {}})
            except KafkaException as e:
                raise RetriableError(f"creating {self._dead_letters.topic}: {e}") from e
            self._dlq_topic_ready = True
        undelivered = await self._in_thread(
            self._dead_letters.deliver, batch.letters, interrupt=self._dead_letters.close
        )
        delivered = len(batch.letters) - len(undelivered)
        batch.dead_lettered += delivered
        self._state.events_dead_lettered += delivered
        batch.letters = undelivered
        if undelivered:
            raise RetriableError(f"{len(undelivered)} dead letters undelivered")

    def _record_progress(self, batch: _Batch) -> None:
        state = self._state
        state.batches += 1
        state.events_applied += batch.applied
        state.events_already_applied += batch.already_applied
        state.lag = self._source.lag()
        state.last_progress = asyncio.get_running_loop().time()

    async def _retry_forever(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Retry `fn` on `RetriableError` with jittered backoff, without a total limit."""
        async for attempt in retrying(
            what, attempts=0, max_delay_s=_FOREVER_S, max_wait_s=MAX_BACKOFF_S
        ):
            with attempt:
                try:
                    result = await fn()
                except RetriableError:
                    self._state.retries += 1
                    if self._state.retrying_since is None:
                        self._state.retrying_since = asyncio.get_running_loop().time()
                    raise
                self._state.retrying_since = None
                return result
        raise AssertionError("unreachable: retrying() re-raises the last error")

    @staticmethod
    async def _in_thread(
        fn: Callable[..., T], *args: Any, interrupt: Callable[[], None] | None = None
    ) -> T:
        """Run a blocking call in a thread; on cancellation, let it finish first.

        A confluent-kafka call cannot be interrupted, and closing the consumer while one
        runs would be unsafe; `interrupt` makes a long wait (the DLQ) give up sooner.
        """
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if interrupt is not None:
                interrupt()
            await asyncio.wait({future})
            raise


async def serve(settings: Settings, *, state: IndexerState | None = None) -> None:
    """Run the indexer until cancelled (SIGTERM): `outbox indexer`, supervised by `outbox dev`."""
    es = elastic_client(settings.es)
    source = KafkaEventSource(settings)
    dead_letters = KafkaDeadLetterWriter(settings.kafka)
    indexer = Indexer(
        settings,
        source=source,
        sink=ElasticsearchSink(es, settings.es),
        dead_letters=dead_letters,
        state=state or IndexerState(),
    )
    log.info("indexer_started", group_id=settings.indexer.group_id)
    try:
        await indexer.run()
    finally:
        await es.close()
        log.info("indexer_stopped")
