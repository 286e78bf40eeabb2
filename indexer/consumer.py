"""Kafka side of the indexer: a pattern-subscribed, read_committed consumer on a thread of its own.

Every confluent-kafka call (poll, commit, watermarks, close) happens on one dedicated poll
thread, so the consumer is never shared between threads and its rebalance and commit
callbacks run there too. The thread fills a bounded buffer that the event loop takes
batches from (`next_batch`): while one batch is in Elasticsearch, the next one is being
fetched and decoded, and an event arriving at an idle indexer is handed over at once
instead of after a fixed linger (natural batching: under load, batches grow to whatever
arrived during the previous bulk, up to `batch_max_events`).

Offsets move only after Elasticsearch (or the DLQ) acknowledged: the loop calls
`acknowledge` with the messages that are done, the offset ledger (`indexer.offset_ledger`)
works out how far each partition may commit (never past an unresolved message, e.g. one of
a parked collection), and the poll thread sends that as an asynchronous commit within one
poll interval. A synchronous commit issued while the group
rebalances waits for a rebalance that needs this very thread to poll, and was seen to block
for minutes; with the broker away it blocks ~45 s. The result arrives in `_on_commit`
during a later poll; an offset stays "uncommitted" until confirmed and is sent again with
the next commit, and from the revoke callback, where the partition is still ours. A commit
that never lands only means redelivery. Messages of revoked partitions leave the buffer
(their new owner gets them again); a batch already in Elasticsearch finishes, but its
offsets are not committed for a partition that is no longer ours.

The partitions of a parked collection's topic are paused (`hold`): its events already
fetched wait with the parked collection, and no more are fetched until it is released
(librdkafka drops what it prefetched for a paused partition and fetches again from the
next offset not yet handed out when it is resumed).

Static membership (`group.instance.id`): a restarted indexer with the same instance id
gets its partitions back at once instead of after the session timeout, and its killed
predecessor never holds them hostage (some coordinators never drop a dead member).
Replicas must have distinct ids; the default, `<group_id>-<hostname>`, is distinct per
container.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from indexer.offset_ledger import OffsetLedger
from infra.errors import FatalError
from infra.kafka import consumer_config
from infra.settings import Settings

log = structlog.get_logger(__name__)

TopicPartitionKey = tuple[str, int]

# How long one poll waits for a message: bounds how late an acknowledged commit is sent
# and how long a shutdown waits for the poll thread.
POLL_TIMEOUT_S = 0.1
# A regex subscription sees a new topic (a new collection) only at librdkafka's next
# periodic metadata refresh (`topic.metadata.refresh.interval.ms`): this bounds how long
# the first write to a new collection waits before the indexer even subscribes to it. One
# small metadata request per interval.
TOPIC_DISCOVERY_MS = 300
# The consumer's lag is measured (from cached watermarks, no network call) this often.
LAG_INTERVAL_S = 2.0
# A failed commit is sent again after this long (each attempt is logged).
COMMIT_RETRY_S = 1.0
# close() waits for a commit in flight; with the coordinator gone that is the whole session
# timeout (45 s). A shutdown waits this long, then leaves the closing thread behind: an
# uncommitted offset only means redelivery.
CLOSE_TIMEOUT_S = 10.0


def instance_id(settings: Settings) -> str:
    """`settings.indexer.instance_id`, or `<group_id>-<hostname>` when empty."""
    return settings.indexer.instance_id or f"{settings.indexer.group_id}-{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class ConsumedMessage:
    """A consumed Kafka message as plain values (confluent-kafka's accessors are Optional)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @property
    def topic_partition(self) -> TopicPartitionKey:
        return (self.topic, self.partition)

    @classmethod
    def of(cls, message: Message) -> ConsumedMessage:
        key = message.key()
        value = message.value()
        return cls(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=key.encode() if isinstance(key, str) else key,
            value=value.encode() if isinstance(value, str) else value,
            headers=_headers(message.headers()),
        )


LagListener = Callable[[dict[TopicPartitionKey, int]], None]


class KafkaEventSource:
    """Consumes `<namespace>.event.*` in the indexer's consumer group on its own thread.

    `start()` / `next_batch()` / `acknowledge()` / `stop()` are for the event loop; the
    underscore methods run on the poll thread (or inside callbacks called there).
    """

    def __init__(self, settings: Settings, *, on_lag: LagListener | None = None) -> None:
        self._pattern = settings.kafka.event_topic_pattern
        self.instance_id = instance_id(settings)
        self._consumer = Consumer(
            consumer_config(
                settings.kafka,
                settings.indexer.group_id,
                on_commit=self._on_commit,
                **{
                    "group.instance.id": self.instance_id,
                    "topic.metadata.refresh.interval.ms": TOPIC_DISCOVERY_MS,
                },
            )
        )
        # Room for the batch being indexed plus the next one; librdkafka prefetches beyond.
        self._capacity = 2 * settings.indexer.batch_max_events
        self._on_lag = on_lag
        # Guards everything below; never held during a blocking confluent-kafka call.
        # Reentrant: confluent-kafka could serve a callback inside a call made with it held.
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._buffer: deque[ConsumedMessage] = deque()
        self._ledger = OffsetLedger()  # taken, resolved, committed
        self._assigned: set[TopicPartitionKey] = set()
        self._held_topics: frozenset[str] = frozenset()  # topics whose partitions are paused
        self._paused: set[TopicPartitionKey] = set()
        self._pause_unknown: set[TopicPartitionKey] = set()  # newly assigned, not yet synced
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data = asyncio.Event()
        self._last_lag_at = 0.0
        self._commit_pending = False  # sent, result not yet seen
        # Set while commits fail (coordinator away): a commit sent then would make
        # close() wait the whole session timeout for it.
        self._commit_failed_at: float | None = None

    # --- the event loop's side ----------------------------------------------------------

    def start(self) -> None:
        """Start the poll thread (it subscribes); call from the event loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="indexer-poll", daemon=True)
        self._thread.start()

    async def next_batch(self, max_events: int) -> list[ConsumedMessage]:
        """Up to `max_events` messages, as soon as there is at least one.

        Raises what stopped the poll thread (a fatal consumer error).
        """
        while True:
            self._data.clear()
            with self._lock:
                if self._failure is not None:
                    raise self._failure
                if self._buffer:
                    count = min(max_events, len(self._buffer))
                    batch = [self._buffer.popleft() for _ in range(count)]
                    for m in batch:
                        self._ledger.take(m.topic_partition, m.offset)
                    self._space.notify()
                    return batch
            await self._data.wait()

    def acknowledge(self, messages: Iterable[ConsumedMessage]) -> dict[TopicPartitionKey, int]:
        """Elasticsearch (or the DLQ) is done with `messages`: commit as far as allowed.

        Returns the positions to be committed with the next commit: per partition, up to
        its lowest message still unresolved (`OffsetLedger`). Partitions no longer assigned
        are skipped: their new owner commits them, and a commit from here could move its
        offset backwards. Until a commit is confirmed, a restart would only redeliver
        events, which the index absorbs.
        """
        with self._lock:
            touched: set[TopicPartitionKey] = set()
            for m in messages:
                if self._ledger.resolve(m.topic_partition, m.offset):
                    touched.add(m.topic_partition)
            return self._ledger.to_commit(touched & self._assigned)

    def hold(self, topics: Iterable[str]) -> None:
        """Pause fetching the partitions of exactly these topics (parked collections')."""
        with self._lock:
            self._held_topics = frozenset(topics)

    def stop(self) -> None:
        """Stop the poll thread and wait for it: it commits what was acknowledged and
        closes the consumer (blocking; run it in a thread)."""
        self._stopping.set()
        with self._lock:
            self._space.notify_all()
        if self._thread is None:
            self._consumer.close()
            return
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("consumer_close_timed_out", timeout_s=CLOSE_TIMEOUT_S)

    @property
    def assigned(self) -> frozenset[TopicPartitionKey]:
        with self._lock:
            return frozenset(self._assigned)

    # --- the poll thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._consumer.subscribe(
                [self._pattern],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            log.info("consumer_subscribed", pattern=self._pattern, instance_id=self.instance_id)
            while not self._stopping.is_set():
                self._sync_pauses()
                self._poll_once()
                self._flush_commits()
                self._measure_lag()
        except BaseException as e:  # noqa: BLE001 - handed to the event loop, which raises it
            with self._lock:
                self._failure = e
            log.error("consumer_failed", error=repr(e))  # noqa: TRY400 - the loop re-raises it
        finally:
            if self._commit_failed_at is None:
                self._flush_commits()
            self._consumer.close()
            log.info("consumer_closed")
            self._wake_loop()

    def _poll_once(self) -> None:
        with self._lock:
            if len(self._buffer) >= self._capacity:
                # Full: the loop is behind (or Elasticsearch is away). Keep serving commits.
                self._space.wait(POLL_TIMEOUT_S)
                return
            room = self._capacity - len(self._buffer)
        # poll() returns as soon as one message is there; consume(n, 0) then takes what is
        # already fetched without waiting (consume(n, t) would wait t for n messages).
        first = self._consumer.poll(POLL_TIMEOUT_S)
        if first is None:
            return
        raw = [first]
        if room > 1:
            raw += self._consumer.consume(room - 1, 0)
        messages: list[ConsumedMessage] = []
        for message in raw:
            error = message.error()
            if error is None:
                messages.append(ConsumedMessage.of(message))
            else:
                self._on_error(error)
        if not messages:
            return
        with self._lock:
            # A rebalance callback may have run inside poll(): keep only what is still ours.
            self._buffer.extend(m for m in messages if m.topic_partition in self._assigned)
        self._wake_loop()

    def _sync_pauses(self) -> None:
        """Pause the assigned partitions of held topics, resume the others that were paused."""
        with self._lock:
            if not (self._held_topics or self._paused or self._pause_unknown):
                return  # the common case: nothing parked
            wanted = {tp for tp in self._assigned if tp[0] in self._held_topics}
            to_pause = (wanted - self._paused) | (wanted & self._pause_unknown)
            # A newly assigned partition may keep librdkafka's pause from an earlier
            # assignment: resume it explicitly unless it is held.
            to_resume = ((self._paused - wanted) | (self._pause_unknown - wanted)) & self._assigned
            self._pause_unknown.clear()
            self._paused = wanted
        if to_pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in sorted(to_pause)])
            log.info("partitions_paused", partitions=[f"{t}[{p}]" for t, p in sorted(to_pause)])
        if to_resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in sorted(to_resume)])
            log.info("partitions_resumed", partitions=[f"{t}[{p}]" for t, p in sorted(to_resume)])

    def _wake_loop(self) -> None:
        self._call_in_loop(self._data.set)

    def _call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # A closed loop means the service is gone: nobody waits for this any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _flush_commits(self) -> None:
        if self._commit_pending:
            return  # the next one goes out once this one is answered
        failed_at = self._commit_failed_at
        if failed_at is not None and time.monotonic() - failed_at < COMMIT_RETRY_S:
            return
        with self._lock:
            self._send_commit(self._assigned)

    def _measure_lag(self) -> None:
        now = time.monotonic()
        if self._on_lag is None or now - self._last_lag_at < LAG_INTERVAL_S:
            return
        self._last_lag_at = now
        self._call_in_loop(self._on_lag, self.lag())

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Per assigned partition: events not yet acknowledged by Elasticsearch.

        Unfetched (cached high watermark minus the consumer's position, which librdkafka
        moves past transaction markers) plus fetched but not yet acknowledged (buffered or
        in the batch being indexed). Local calls only; poll thread only.
        """
        with self._lock:
            assigned = sorted(self._assigned)
            pending = Counter(m.topic_partition for m in self._buffer)
            for key in assigned:
                pending[key] += self._ledger.outstanding(key)
        if not assigned:
            return {}
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in assigned])
        except KafkaException:
            return {}
        lags: dict[TopicPartitionKey, int] = {}
        for tp in positions:
            key = (tp.topic, tp.partition)
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            unfetched = max(0, high - tp.offset) if tp.offset >= 0 else 0
            lags[key] = unfetched + pending.get(key, 0)
        return lags

    # --- internals (lock held, or callbacks inside poll/consume/close on the poll thread) --

    def _send_commit(self, keys: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Send an asynchronous commit of the positions of `keys` not yet confirmed."""
        wanted = self._ledger.to_commit(keys)
        if not wanted:
            return {}
        partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(wanted.items())]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=True)
            self._commit_pending = True
        except KafkaException as e:
            error: KafkaError = e.args[0]
            if error.fatal():
                raise FatalError(f"offset commit failed fatally: {error}") from e
            log.warning("offsets_commit_failed", error=str(error), partitions=len(wanted))
            return {}
        return wanted

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self._commit_pending = False
        if error is not None:
            if error.code() != KafkaError._NO_OFFSET:
                self._commit_failed_at = time.monotonic()
                log.warning("offsets_commit_failed", error=str(error), partitions=len(partitions))
            return  # stays uncommitted: sent again with the next commit
        self._commit_failed_at = None
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if tp.error is None and tp.offset >= 0 and key in self._assigned:
                    self._ledger.confirmed(key, tp.offset)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise FatalError(f"Kafka consumer failed fatally: {error}")
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            # A pattern no topic matches yet: normal before the first write to any collection.
            log.info("consumer_waiting_for_topics", error=str(error))
            return
        log.warning("consumer_error", error=str(error), code=error.code())

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        with self._lock:
            keys = {(tp.topic, tp.partition) for tp in partitions}
            self._assigned |= keys
            self._pause_unknown |= keys
        log.info("partitions_assigned", partitions=_describe(partitions))

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            # Still ours for the duration of this callback: commit what was acknowledged
            # (unless the coordinator is away: close() would then wait for the commit).
            if self._commit_failed_at is None:
                self._send_commit(revoked & self._assigned)
            self._forget(revoked)
        log.info("partitions_revoked", partitions=_describe(partitions))

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Already someone else's: committing now could move the new owner's offset back.
        with self._lock:
            self._forget({(tp.topic, tp.partition) for tp in partitions})
        log.warning("partitions_lost", partitions=_describe(partitions))

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        self._assigned -= keys
        self._paused -= keys
        self._pause_unknown -= keys
        self._ledger.forget(keys)
        kept = [m for m in self._buffer if m.topic_partition not in keys]
        if len(kept) != len(self._buffer):
            self._buffer = deque(kept)


def _headers(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> list[tuple[str, bytes | None]]:
    # A consumed message's headers are a list of pairs; the stubs also allow a dict.
    pairs = list(raw.items()) if isinstance(raw, dict) else raw or []
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def _describe(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
