"""The indexer's loop: Kafka `outbox.event.*` → Elasticsearch, idempotent, at least once.

This module is the loop (`indexer.service` wires it to the servers); the rules are
elsewhere, pure and tested without servers: `indexer.batch` (what each event becomes,
what a bulk answer means, what is stale, dead-lettered, retried or parked),
`indexer.parking` (parked collections and their retry schedule), `indexer.offset_ledger`
(how far each partition may commit). The adapters are
behind `indexer.ports`.

A pipeline of three stages, each strictly in order:

1. the poll thread (`indexer.consumer`) fetches messages into a bounded buffer;
2. the projector task takes a batch as soon as there is one and decodes it
   (`batch.decode`), while the previous batch is still in Elasticsearch;
3. the loop indexes each batch in bulk *rounds*: the indices of the batch's collections
   are ensured (created behind their aliases on first use), each document's newest
   pending version is sent (bulk requests capped by `OUTBOX_INDEXER_BATCH_MAX_EVENTS` and
   `OUTBOX_INDEXER_BULK_MAX_BYTES`; a request Elasticsearch refuses as too large, 413, is
   split in halves, down to a single event, which is then poison), and the answers are
   settled (`batch.settle`): a poison newest version goes to the DLQ and the document's
   next newest version is sent in the next round. Then the poison events are
   dead-lettered and everything resolved is acknowledged.

**Isolation.** An index-level failure of one collection (its index cannot be created,
the alias name is an existing index's, the index is blocked, closed, red or has no write
index) *parks* that collection: its events wait in memory, its partitions are paused, and
it is tried again with backoff; readiness names it, `outbox_indexer_parked_collections`
counts it, and `outbox status` shows it (`infra.parked_report`). Every other collection's
events keep being indexed, in the same batches, and the process never exits for it.

**Offsets.** A message is resolved when Elasticsearch acknowledged it (indexed, or a 409:
the index already holds that version or a newer one), or the DLQ acknowledged its dead
letter. A partition commits up to its lowest unresolved message, never past it
(`OffsetLedger`): a parked collection's events hold back their partitions' committed
offsets while later events are indexed, so a restart skips nothing; redelivering the
later ones is harmless (external versions make them 409s). Each collection has its own
topic, so in practice a parked collection holds back only its own partitions; the rule
does not depend on it.

**Retries.** Elasticsearch unreachable, a 429/5xx for a whole request, or an item pushed
back (`es_rejected_execution_exception`) retries the round with jittered backoff for as
long as it takes (readiness reports it meanwhile); a DLQ write likewise. Nothing is
dropped and the process stays up.

`/healthz`, `/readyz` and `/metrics` answer on `OUTBOX_INDEXER_METRICS_PORT`; readiness
turns red while a collection is parked, while Elasticsearch (or the DLQ) fails, or when
events wait (consumer lag) and nothing was acknowledged for
`OUTBOX_INDEXER_STALL_AFTER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from indexer.batch import (
    DLQ,
    INDEXED,
    STALE,
    Event,
    ItemOutcome,
    Outcome,
    Poison,
    chunks,
    decode,
    halves,
    plan_round,
    settle,
)
from indexer.consumer import ConsumedMessage, TopicPartitionKey
from indexer.parking import ParkingLot
from indexer.ports import DeadLetterSink, EventSource, IndexSink, ParkingReporter
from indexer.progress import IndexerState, ParkedInfo, count_results
from indexer.sink import BulkRequestRefusedError, IndexUnusableError
from infra.dead_letter import DeadLetter
from infra.errors import PipelineError, RetriableError
from infra.index_limits import IndexLimits, index_limits
from infra.parked_report import REPORT_INTERVAL_S, ParkedEntry, ParkedReport
from infra.retry import retrying
from infra.settings import Settings
from infra.tracing import Tracing, trace_id_of

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
# A failed parking report is tried again after this long at the earliest.
REPORT_RETRY_S = 5.0
# A collection whose index is missing again right after being created this often is parked.
MAX_INDEX_RECREATIONS = 3
# How many dead-lettered messages the indexer remembers (by partition and offset).
DEAD_LETTER_MEMORY = 100_000
# Answers to a whole bulk request that say "smaller": split the request and send again.
_SPLIT_STATUSES = frozenset({400, 413})


@dataclass(frozen=True, slots=True)
class Projected:
    """One polled batch, decoded."""

    messages: list[ConsumedMessage]
    events: list[Event]
    poison: list[Poison]


@dataclass
class _Work:
    """Events on their way through bulk rounds, and what became of them."""

    pending: list[Event]
    acknowledged: list[tuple[Event, str]] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    parked: dict[str, tuple[str, list[Event]]] = field(default_factory=dict)
    missing: Counter[str] = field(default_factory=Counter)  # 404s per collection

    def park(self, collection: str, reason: str, events: Iterable[Event] = ()) -> None:
        """Set the collection's pending events (and `events`) aside with `reason`."""
        moved = [e for e in self.pending if e.collection == collection]
        self.pending = [e for e in self.pending if e.collection != collection]
        _, already = self.parked.setdefault(collection, (reason, []))
        already += [*events, *moved]


def _event_context(message: ConsumedMessage, record: Any | None) -> dict[str, Any]:
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


def _describe(messages: Iterable[ConsumedMessage]) -> list[str]:
    """`topic[partition]@first-last` per partition of a batch."""
    ranges: dict[TopicPartitionKey, tuple[int, int]] = {}
    for m in messages:
        low, high = ranges.get(m.topic_partition, (m.offset, m.offset))
        ranges[m.topic_partition] = (min(low, m.offset), max(high, m.offset))
    return [f"{t}[{p}]@{low}-{high}" for (t, p), (low, high) in sorted(ranges.items())]


class DeadLetterMemory:
    """The messages this process has dead-lettered, by partition and offset (bounded).

    A rebalance while a batch is being dead-lettered hands its partitions over before the
    offsets are committed, so the same messages come back (to this consumer, on the
    embedded stand-in every time, whose coordinator ends the old generation at once).
    Elasticsearch absorbs a repeated event (external versions); the DLQ would hold a second
    copy, so a message remembered here is acknowledged without being written again.
    """

    def __init__(self, capacity: int = DEAD_LETTER_MEMORY) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[TopicPartitionKey, int], None] = OrderedDict()

    def __contains__(self, message: ConsumedMessage) -> bool:
        return (message.topic_partition, message.offset) in self._seen

    def remember(self, messages: Iterable[ConsumedMessage]) -> None:
        for message in messages:
            self._seen[(message.topic_partition, message.offset)] = None
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


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
    """Runs the poll → decode → bulk rounds → dead-letter → acknowledge loop until cancelled."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: EventSource,
        sink: IndexSink,
        dead_letters: DeadLetterSink,
        state: IndexerState,
        reporter: ParkingReporter | None = None,
        instance: str = "",
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._source = source
        self._sink = sink
        self._dead_letters = dead_letters
        self._state = state
        self._reporter = reporter
        self._instance = instance
        self._topic_prefix = settings.kafka.event_topic("")
        self._lot = ParkingLot(max_retry_s=settings.indexer.parked_retry_max_seconds)
        self._limits: dict[str, IndexLimits] = {}
        self._log_tasks: set[asyncio.Task[None]] = set()
        self._dlq_ready = False
        self._dead_lettered = DeadLetterMemory()
        self._report_due = True
        self._reported_reasons: dict[str, str] = {}
        self._reported_at = float("-inf")
        self._report_failed_at = float("-inf")

    async def run(self) -> None:
        self._source.start()
        await self._report_parked(starting=True)
        # One decoded batch waits while the previous one is in Elasticsearch.
        projected: asyncio.Queue[Projected] = asyncio.Queue(maxsize=1)
        projector = asyncio.create_task(self._project_batches(projected), name="indexer-project")
        try:
            while True:
                batch = await self._next_projected(
                    projected, projector, wait_s=self._lot.seconds_until_due()
                )
                if batch is not None:
                    await self._with_grace(self._process(batch), len(batch.messages))
                for collection in self._lot.due():
                    await self._with_grace(self._retry_parked(collection), 0)
                await self._report_parked()
        finally:
            projector.cancel()
            await asyncio.gather(projector, *self._log_tasks, return_exceptions=True)
            self._dead_letters.close()
            await asyncio.to_thread(self._source.stop)
            await asyncio.to_thread(self._dead_letters.shutdown)
            await self._report_parked(stopping=True)

    async def _next_projected(
        self,
        projected: asyncio.Queue[Projected],
        projector: asyncio.Task[None],
        *,
        wait_s: float | None,
    ) -> Projected | None:
        """The next decoded batch, or None after `wait_s` (a parked retry is due).

        Raises what stopped the projector (a fatal consumer error).
        """
        if not projected.empty():
            return projected.get_nowait()
        getter = asyncio.ensure_future(projected.get())
        try:
            await asyncio.wait(
                {getter, projector}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if projector.done():
            projector.result()  # raises the projector's error
            raise AssertionError("unreachable: the projector never returns")
        return None

    async def _project_batches(self, projected: asyncio.Queue[Projected]) -> None:
        max_events = self._settings.indexer.batch_max_events
        while True:
            messages = await self._source.next_batch(max_events)
            events, poison = decode(
                messages,
                topic_prefix=self._topic_prefix,
                alias_for=self._settings.es.alias_for,
                limits_for=self._limits_for,
                indexed_at=datetime.now(UTC),
            )
            for p in poison:
                log.warning(
                    "event_dead_lettered", error=p.error, **_event_context(p.message, p.record)
                )
            await projected.put(Projected(messages, events, poison))

    def _limits_for(self, collection: str) -> IndexLimits:
        limits = self._limits.get(collection)
        if limits is None:
            limits = self._limits[collection] = index_limits(self._settings.es, collection)
        return limits

    async def _with_grace(self, work: Awaitable[None], events: int) -> None:
        """Run `work`; on cancellation (shutdown) give it a moment to finish and commit."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_S)
            if done:
                log.info("batch_finished_on_shutdown", events=events)
            else:
                log.warning("batch_abandoned_on_shutdown", events=events)
                task.cancel()
                await asyncio.wait({task})
            raise

    # --- a batch ---------------------------------------------------------------------------

    async def _process(self, batch: Projected) -> None:
        # Every line logged for this batch (retries included) says which messages it holds.
        with structlog.contextvars.bound_contextvars(batch=_describe(batch.messages)):
            started = time.monotonic()
            self._state.batch_consumed(len(batch.messages))
            self._forget_revoked()
            waiting = [e for e in batch.events if e.collection in self._lot]
            if waiting:
                self._lot.hold(waiting)
                self._parked_changed()
            work = await self._index([e for e in batch.events if e.collection not in self._lot])
            for collection, (reason, events) in work.parked.items():
                self._park(collection, reason, events)
            await self._finish(
                work.acknowledged, [*batch.poison, *work.poison], len(batch.messages), started
            )

    async def _retry_parked(self, collection: str) -> None:
        """Try a parked collection again: its index checked anew, its waiting events sent."""
        self._forget_revoked()
        parked = self._lot.parked.get(collection)
        if parked is None:
            return
        events = parked.held()
        with structlog.contextvars.bound_contextvars(parked=collection):
            started = time.monotonic()
            self._sink.forget(collection)
            work = await self._index(events)
            if collection in work.parked:
                reason, remaining = work.parked[collection]
                self._lot.failed_again(collection, reason, remaining)
                self._state.parked_retry_failed()
                log.warning(
                    "parked_collection_still_refused",
                    collection=collection,
                    reason=reason,
                    events=len(remaining),
                    attempts=self._lot.parked[collection].attempts,
                )
            else:
                self._lot.release(collection)
                log.info("parked_collection_released", collection=collection, events=len(events))
            self._parked_changed()
            await self._finish(work.acknowledged, work.poison, 0, started)

    def _park(self, collection: str, reason: str, events: list[Event]) -> None:
        if self._lot.park(collection, reason, events):
            log.warning(
                "collection_parked",
                collection=collection,
                reason=reason,
                events=len(events),
                topic=self._settings.kafka.event_topic(collection),
            )
        self._parked_changed()

    def _forget_revoked(self) -> None:
        """Parked events of partitions no longer ours are their new owner's business."""
        for collection in self._lot.keep_partitions(self._source.assigned):
            log.info("parked_collection_handed_over", collection=collection)
            self._parked_changed()

    def _parked_changed(self) -> None:
        """Readiness, metrics, paused partitions and the report follow the parking lot."""
        for collection in set(self._state.parked) - set(self._lot.parked):
            self._state.parked_changed(collection, None)
        for collection, parked in self._lot.parked.items():
            self._state.parked_changed(
                collection, ParkedInfo(parked.reason, parked.since, len(parked.events))
            )
        self._source.hold(self._settings.kafka.event_topic(c) for c in self._lot.parked)
        reasons = {c: p.reason for c, p in self._lot.parked.items()}
        if reasons != self._reported_reasons:
            # Event counts alone wait for the next heartbeat.
            self._reported_reasons = reasons
            self._report_due = True

    # --- bulk rounds -------------------------------------------------------------------------

    async def _index(self, events: Sequence[Event]) -> _Work:
        """Send `events` in rounds until each is acknowledged, poison or parked."""
        work = _Work(list(events))
        while work.pending:
            await self._retry_forever("es_index_create", lambda: self._ensure_indices(work))
            if work.pending:
                await self._retry_forever("es_bulk", lambda: self._round(work))
        return work

    async def _ensure_indices(self, work: _Work) -> None:
        for collection in sorted({e.collection for e in work.pending}):
            try:
                await self._sink.ensure_index(collection)
            except IndexUnusableError as e:
                work.park(collection, str(e))

    async def _round(self, work: _Work) -> None:
        """One bulk round; raises `RetriableError` (after keeping what it achieved) when
        Elasticsearch pushed back, so the retry policy pauses before the next."""
        sent = plan_round(work.pending)
        outcomes = await self._send(sent)
        result = settle(work.pending, sent, outcomes)
        acked_at = datetime.now(UTC)
        self._state.bulk_answered(
            None,
            [
                (acked_at - event.record.time).total_seconds()
                for event, _ in result.acknowledged
                if not event.record.replayed
            ],
        )
        work.pending = result.pending
        work.acknowledged += result.acknowledged
        work.poison += result.poison
        for p in result.poison:
            log.warning("event_dead_lettered", error=p.error, **_event_context(p.message, p.record))
        for collection, (reason, events) in result.parked.items():
            work.park(collection, reason, events)
        for collection in result.missing_indices:
            work.missing[collection] += 1
            if work.missing[collection] > MAX_INDEX_RECREATIONS:
                # Created and gone again and again: something removes it; stop trying hard.
                work.park(collection, f"its index vanished {MAX_INDEX_RECREATIONS} times")
                continue
            # Created again (and the events sent again) by the next round of `_index`.
            self._sink.forget(collection)
            log.warning("index_missing", collection=collection)
        if result.retry_error:
            raise RetriableError(
                f"{len(work.pending)} bulk items must be retried: {result.retry_error}"
            )

    async def _send(self, events: list[Event]) -> list[ItemOutcome]:
        """One outcome per event, in bulk requests capped by events and bytes."""
        outcomes: dict[int, ItemOutcome] = {}
        requests = chunks(
            events,
            max_events=self._settings.indexer.batch_max_events,
            max_bytes=self._settings.indexer.bulk_max_bytes,
        )
        failed: RetriableError | None = None
        for request in requests:
            if failed is None:
                failed = await self._send_request(request, outcomes)
            if failed is not None:
                # Elasticsearch is away: the rest waits for the retry instead of timing out.
                outcomes.update((id(e), ItemOutcome(Outcome.RETRY, str(failed))) for e in request)
        return [outcomes[id(e)] for e in events]

    async def _send_request(
        self, request: list[Event], outcomes: dict[int, ItemOutcome]
    ) -> RetriableError | None:
        """Send one bulk request, splitting it if Elasticsearch says it is too large."""
        self._state.bulk_sent(sum(len(e.body) for e in request))
        sent_at = time.monotonic()
        try:
            answers = await self._sink.bulk([e.body for e in request])
        except RetriableError as e:
            return e
        except BulkRequestRefusedError as e:
            if e.status not in _SPLIT_STATUSES:
                return RetriableError(str(e))
            if len(request) == 1:
                outcomes[id(request[0])] = ItemOutcome(
                    Outcome.POISON, f"Elasticsearch refuses this event even alone: {e}"
                )
                return None
            log.warning("bulk_request_split", events=len(request), status=e.status)
            for half in halves(request):
                failed = await self._send_request(half, outcomes)
                if failed is not None:
                    return failed
            return None
        self._state.bulk_answered(time.monotonic() - sent_at, ())
        outcomes.update((id(e), answer) for e, answer in zip(request, answers, strict=True))
        return None

    # --- acknowledging -----------------------------------------------------------------------

    async def _finish(
        self,
        acknowledged: list[tuple[Event, str]],
        poison: list[Poison],
        consumed: int,
        started: float,
    ) -> None:
        """Dead-letter `poison`, then acknowledge it and `acknowledged` (offsets move)."""
        started_ns = time.time_ns()
        fresh = [p for p in poison if p.message not in self._dead_lettered]
        if len(fresh) < len(poison):
            log.info("dead_letters_already_written", events=len(poison) - len(fresh))
        if fresh:
            await self._dead_letter([dead_letter_for(p.message, p.error) for p in fresh])
            self._dead_lettered.remember(p.message for p in fresh)
        queued = self._source.acknowledge(
            [e.message for e, _ in acknowledged] + [p.message for p in poison]
        )
        if not acknowledged and not poison and not consumed:
            return
        self._log_indexed(acknowledged)
        if self._tracing.enabled:
            self._trace_indexed(acknowledged, started_ns)
        results = count_results(
            [(event.collection, result) for event, result in acknowledged]
            + [(p.collection, DLQ) for p in poison]
        )
        self._state.batch_acknowledged(results=results, events=consumed)
        log.info(
            "batch_indexed",
            events=consumed,
            indexed=results_total(results, INDEXED),
            stale=results_total(results, STALE),
            dead_lettered=len(poison),
            parked=sum(len(p.events) for p in self._lot.parked.values()),
            commit_queued_partitions=len(queued),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        pending = list(letters)

        async def attempt() -> None:
            nonlocal pending
            if not self._dlq_ready:
                # Before the first dead letter, so Kafka never auto-creates the topic with
                # its defaults; a problem here delays only batches with poison.
                await self._dead_letters.prepare()
                self._dlq_ready = True
            pending = await self._in_thread(
                self._dead_letters.deliver, pending, interrupt=self._dead_letters.close
            )
            if pending:
                raise RetriableError(f"{len(pending)} dead letters undelivered")

        await self._retry_forever("dlq_write", attempt)
        self._state.dead_lettered(len(letters))

    def _log_indexed(self, done: list[tuple[Event, str]]) -> None:
        """One `event_indexed` line per acknowledged event, written while the next bulk is
        in flight: rendering a thousand lines is a sizeable share of a batch's time. The
        task inherits this batch's bound context (a copy of the contextvars)."""
        if not done:
            return
        task = asyncio.create_task(_write_indexed_lines(done))
        self._log_tasks.add(task)
        task.add_done_callback(self._log_tasks.discard)

    def _trace_indexed(self, done: list[tuple[Event, str]], started_ns: int) -> None:
        """One span per event under the write's trace, spanning its batch's bulk request."""
        ended_ns = time.time_ns()
        for event, result in done:
            self._tracing.record_span(
                "outbox.index",
                parent=event.record.traceparent,
                start_ns=started_ns,
                end_ns=ended_ns,
                attributes={
                    "outbox.event_id": event.record.event_id,
                    "outbox.collection": event.record.collection,
                    "outbox.version": event.record.version,
                    "outbox.result": result,
                },
            )

    # --- the parking report --------------------------------------------------------------

    async def _report_parked(self, *, starting: bool = False, stopping: bool = False) -> None:
        """Publish the parked collections for `outbox status`: when they changed, every
        `REPORT_INTERVAL_S` while any wait, and (empty) on start and stop. Best effort: a
        failed report is tried again after `REPORT_RETRY_S`."""
        if self._reporter is None:
            return
        now = time.monotonic()
        if not (starting or stopping):
            if now - self._report_failed_at < REPORT_RETRY_S:
                return
            heartbeat = bool(self._lot.parked) and now - self._reported_at >= REPORT_INTERVAL_S
            if not (self._report_due or heartbeat):
                return
        parked = (
            ()
            if stopping
            else tuple(
                ParkedEntry(c, p.reason, p.since, len(p.events))
                for c, p in sorted(self._lot.parked.items())
            )
        )
        report = ParkedReport(self._instance, datetime.now(UTC), parked)
        try:
            if starting:
                await self._reporter.prepare()
            await asyncio.to_thread(self._reporter.publish, report)
        except PipelineError as e:
            self._report_failed_at = now
            log.warning("parked_report_failed", error=str(e))
        else:
            self._report_due = False
            self._reported_at = now
        if stopping:
            await asyncio.to_thread(self._reporter.close)

    # --- helpers -------------------------------------------------------------------------

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


async def _write_indexed_lines(done: list[tuple[Event, str]]) -> None:
    for i, (event, result) in enumerate(done, start=1):
        log.info("event_indexed", result=result, **_event_context(event.message, event.record))
        if i % LOG_CHUNK == 0:
            await asyncio.sleep(0)  # let the next bulk's I/O in


def results_total(results: dict[tuple[str, str], int], result: str) -> int:
    return sum(count for (_collection, r), count in results.items() if r == result)
