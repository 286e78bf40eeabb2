"""The indexer service: Kafka `outbox.event.*` → Elasticsearch, idempotent, at least once.

A pipeline of three stages, each strictly in order:

1. the poll thread (`indexer.consumer`) fetches messages into a bounded buffer;
2. the projector task takes a batch as soon as there is one, decodes and projects it
   (`indexer.projection`), while the previous batch is still in Elasticsearch;
3. the indexing loop applies each batch with one bulk request, dead-letters the poison
   events, then acknowledges the batch (its offsets are committed by the poll thread).

Bulks are sequential: a document's newer event is never sent before the bulk holding an
older one was acknowledged. Offsets move only after Elasticsearch acknowledged every event
of the batch (a 409 counts: the index already holds that version or a newer one) or the
DLQ acknowledged its dead letter. Retriable failures retry the same batch with jittered
backoff for as long as it takes (readiness reports the failing dependency meanwhile);
nothing is dropped and the process stays up.

`/healthz`, `/readyz` and `/metrics` answer on `OUTBOX_INDEXER_METRICS_PORT`; readiness
turns red while Elasticsearch (or the DLQ) fails, or when events wait (consumer lag) and
nothing was acknowledged for `OUTBOX_INDEXER_STALL_AFTER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from confluent_kafka import KafkaException

from indexer.consumer import ConsumedMessage, KafkaEventSource, TopicPartitionKey
from indexer.dlq_writer import KafkaDeadLetterWriter
from indexer.progress import DLQ, INDEXED, STALE, IndexerState, count_results
from indexer.projection import (
    IndexAction,
    ProjectionError,
    action_for,
    check_indexable,
    latest_per_document,
)
from indexer.sink import ElasticsearchSink, ItemResult
from infra.dead_letter import DeadLetter
from infra.elastic import elastic_client
from infra.envelope import EnvelopeError, OutboxRecord
from infra.errors import RetriableError
from infra.health import HealthServer, ProgressMonitor
from infra.kafka import ensure_topics
from infra.retry import retrying
from infra.settings import Settings
from infra.tracing import Tracing, configure_tracing, trace_id_of

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Retry until it works: each pause is bounded, the total is not.
_FOREVER_S = 10.0**9
MAX_BACKOFF_S = 5.0
# On shutdown, the batch in flight gets this long to finish and commit before it is
# abandoned (uncommitted, hence redelivered to whoever consumes the partition next).
SHUTDOWN_GRACE_S = 5.0
# `event_indexed` lines are written this many at a time between other work.
LOG_CHUNK = 50


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
    letter_collections: list[str] = field(default_factory=list)  # parallel to `letters`
    # (item, result) for every event Elasticsearch acknowledged: indexed or stale.
    done: list[tuple[_Item, str]] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)  # collection per dead letter

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
    """Runs the poll → project → bulk → dead-letter → acknowledge pipeline until cancelled."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: KafkaEventSource,
        sink: ElasticsearchSink,
        dead_letters: KafkaDeadLetterWriter,
        state: IndexerState,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._source = source
        self._sink = sink
        self._dead_letters = dead_letters
        self._state = state
        self._topic_prefix = settings.kafka.event_topic("")
        # Confirmed commits land in the source's dict from the commit callback.
        state.committed_offsets = source.committed
        self._dlq_topic_ready = False
        self._log_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self._source.start()
        # One projected batch waits while the previous one is in Elasticsearch.
        projected: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=1)
        projector = asyncio.create_task(self._project_batches(projected), name="indexer-project")
        try:
            while True:
                batch = await self._next_projected(projected, projector)
                await self._process_with_grace(batch)
        finally:
            projector.cancel()
            await asyncio.gather(projector, *self._log_tasks, return_exceptions=True)
            self._dead_letters.close()
            await asyncio.to_thread(self._source.stop)
            await asyncio.to_thread(self._dead_letters.shutdown)

    async def _next_projected(
        self, projected: asyncio.Queue[_Batch], projector: asyncio.Task[None]
    ) -> _Batch:
        """The next projected batch; raises what stopped the projector (a fatal error)."""
        if not projected.empty():
            return projected.get_nowait()
        getter = asyncio.ensure_future(projected.get())
        try:
            await asyncio.wait({getter, projector}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        projector.result()  # raises the projector's error
        raise AssertionError("unreachable: the projector never returns")

    async def _project_batches(self, projected: asyncio.Queue[_Batch]) -> None:
        max_events = self._settings.indexer.batch_max_events
        while True:
            messages = await self._source.next_batch(max_events)
            batch = _Batch(messages)
            await self._project(batch)
            await projected.put(batch)

    async def _process_with_grace(self, batch: _Batch) -> None:
        task = asyncio.ensure_future(self._process(batch))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_S)
            if done:
                log.info("batch_finished_on_shutdown", events=len(batch.messages))
            else:
                log.warning("batch_abandoned_on_shutdown", events=len(batch.messages))
                task.cancel()
                await asyncio.wait({task})
            raise

    async def _process(self, batch: _Batch) -> None:
        # Every line logged for this batch (retries included) says which messages it holds.
        with structlog.contextvars.bound_contextvars(batch=_describe(batch.messages)):
            await self._process_bound(batch)

    async def _process_bound(self, batch: _Batch) -> None:
        started = time.monotonic()
        started_ns = time.time_ns()
        self._state.batch_consumed(len(batch.messages))
        if batch.items:
            await self._retry_forever("es_bulk", lambda: self._apply(batch))
        if batch.letters:
            await self._retry_forever("dlq_write", lambda: self._write_dead_letters(batch))
        queued = self._source.acknowledge(batch.messages)
        self._log_indexed(batch.done)
        if self._tracing.enabled:
            self._trace_indexed(batch.done, started_ns)
        results = count_results(
            [(item.record.collection, result) for item, result in batch.done]
            + [(collection, DLQ) for collection in batch.dead_lettered]
        )
        self._state.batch_acknowledged(results=results, events=len(batch.messages))
        log.info(
            "batch_indexed",
            events=len(batch.messages),
            indexed=results_total(results, INDEXED),
            stale=results_total(results, STALE),
            dead_lettered=len(batch.dead_lettered),
            commit_queued_partitions=len(queued),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _log_indexed(self, done: list[tuple[_Item, str]]) -> None:
        """One `event_indexed` line per acknowledged event, written while the next bulk is
        in flight: rendering a thousand lines is a sizeable share of a batch's time. The
        task inherits this batch's bound context (a copy of the contextvars)."""
        if not done:
            return
        task = asyncio.create_task(_write_indexed_lines(done))
        self._log_tasks.add(task)
        task.add_done_callback(self._log_tasks.discard)

    def _trace_indexed(self, done: list[tuple[_Item, str]], started_ns: int) -> None:
        """One span per event under the write's trace, spanning its batch's bulk request."""
        ended_ns = time.time_ns()
        for item, result in done:
            self._tracing.record_span(
                "outbox.index",
                parent=item.record.traceparent,
                start_ns=started_ns,
                end_ns=ended_ns,
                attributes={
                    "outbox.event_id": item.record.event_id,
                    "outbox.collection": item.record.collection,
                    "outbox.version": item.record.version,
                    "outbox.result": result,
                },
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
        batch.letter_collections.append(
            record.collection if record else message.topic.removeprefix(self._topic_prefix)
        )
        log.warning("event_dead_lettered", error=error, **_event_context(message, record))

    async def _apply(self, batch: _Batch) -> None:
        """One bulk request for the newest action per document; raise to retry the rest."""
        by_action = {id(item.action): item for item in batch.items}
        latest = [
            by_action[id(a)]
            for a in latest_per_document(item.action for item in batch.items).values()
        ]
        kept = {id(item) for item in latest}
        # Superseded in this batch: Elasticsearch would answer 409 once the newer one is in.
        superseded = [item for item in batch.items if id(item) not in kept]
        batch.items = latest
        sent_at = time.monotonic()
        outcomes = await self._sink.bulk([item.action for item in latest])
        acked_at = datetime.now(UTC)
        retry: list[_Item] = []
        retry_error = ""
        acknowledged: list[_Item] = []
        for item, outcome in zip(latest, outcomes, strict=True):
            if outcome.result is ItemResult.APPLIED:
                batch.done.append((item, INDEXED))
                acknowledged.append(item)
            elif outcome.result is ItemResult.ALREADY_APPLIED:
                batch.done.append((item, STALE))
                acknowledged.append(item)
            elif outcome.result is ItemResult.POISON:
                self._poison(batch, item.message, item.record, outcome.error)
            else:
                retry.append(item)
                retry_error = retry_error or outcome.error
                self._sink.forget(item.action.alias)
        if not retry:
            # The superseded events count as acknowledged with the event that replaced them.
            batch.done += [(item, STALE) for item in superseded]
            acknowledged += superseded
        else:
            retry += superseded
        self._state.bulk_answered(
            time.monotonic() - sent_at,
            [
                (acked_at - item.record.time).total_seconds()
                for item in acknowledged
                if not item.record.replayed
            ],
        )
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
        kept = {id(letter) for letter in undelivered}
        delivered = [
            collection
            for letter, collection in zip(batch.letters, batch.letter_collections, strict=True)
            if id(letter) not in kept
        ]
        batch.dead_lettered += delivered
        self._state.dead_lettered(len(delivered))
        batch.letter_collections = [
            collection
            for letter, collection in zip(batch.letters, batch.letter_collections, strict=True)
            if id(letter) in kept
        ]
        batch.letters = undelivered
        if undelivered:
            raise RetriableError(f"{len(undelivered)} dead letters undelivered")

    async def _retry_forever(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Retry `fn` on `RetriableError` with jittered backoff, without a total limit."""
        async for attempt in retrying(
            what, attempts=0, max_delay_s=_FOREVER_S, max_wait_s=MAX_BACKOFF_S
        ):
            with attempt:
                try:
                    result = await fn()
                except RetriableError as e:
                    self._state.attempt_failed(what, str(e))
                    raise
                self._state.attempt_succeeded()
                return result
        raise AssertionError("unreachable: retrying() re-raises the last error")

    @staticmethod
    async def _in_thread(
        fn: Callable[..., T], *args: Any, interrupt: Callable[[], None] | None = None
    ) -> T:
        """Run a blocking call in a thread; on cancellation, let it finish first.

        A confluent-kafka call cannot be interrupted; `interrupt` makes a long wait (the
        DLQ) give up sooner.
        """
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if interrupt is not None:
                interrupt()
            await asyncio.wait({future})
            raise


async def _write_indexed_lines(done: list[tuple[_Item, str]]) -> None:
    for i, (item, result) in enumerate(done, start=1):
        log.info("event_indexed", result=result, **_event_context(item.message, item.record))
        if i % LOG_CHUNK == 0:
            await asyncio.sleep(0)  # let the next bulk's I/O in


def results_total(results: dict[tuple[str, str], int], result: str) -> int:
    return sum(count for (_collection, r), count in results.items() if r == result)


async def serve(settings: Settings, *, state: IndexerState | None = None) -> None:
    """Run the indexer until cancelled (SIGTERM): `outbox indexer`, supervised by `outbox dev`.

    `/healthz`, `/readyz` and `/metrics` answer on the indexer's metrics port meanwhile.
    """
    indexer_settings = settings.indexer
    if state is None:
        state = IndexerState()
    state.monitor = ProgressMonitor(stall_after_s=indexer_settings.stall_after_seconds)
    health = HealthServer(
        indexer_settings.metrics_host, indexer_settings.metrics_port, state.readiness
    )
    async with health:
        await _serve(settings, state)


async def _serve(settings: Settings, state: IndexerState) -> None:
    es = elastic_client(settings.es)
    loop = asyncio.get_running_loop()

    def on_lag(lags: dict[TopicPartitionKey, int]) -> None:
        if not loop.is_closed():
            state.lag_measured(lags)

    source = KafkaEventSource(settings, on_lag=on_lag)
    dead_letters = KafkaDeadLetterWriter(settings.kafka)
    indexer = Indexer(
        settings,
        source=source,
        sink=ElasticsearchSink(es, settings.es),
        dead_letters=dead_letters,
        state=state,
        tracing=configure_tracing("indexer"),
    )
    log.info(
        "indexer_started",
        group_id=settings.indexer.group_id,
        instance_id=source.instance_id,
        metrics_port=settings.indexer.metrics_port,
    )
    try:
        await indexer.run()
    finally:
        await es.close()
        log.info("indexer_stopped")
