"""Kafka side of the indexer: a pattern-subscribed, read_committed consumer with manual commits.

Every method blocks; the service calls them one at a time through `asyncio.to_thread`, so
confluent-kafka's rebalance callbacks (which run inside `consume()`/`close()`) never race
with a batch in flight: the batch being assembled drops messages of revoked partitions
(they are redelivered to the new owner), and offsets acknowledged but not yet committed
are committed while the partition is still ours, then forgotten.

Commits are explicit (never auto-commit) but asynchronous: a synchronous commit issued
while the group rebalances waits for a rebalance that needs this very thread to poll,
and was seen to block for minutes; with the broker away it blocks ~45 s. The result
arrives in `_on_commit` during a later poll; an offset stays "uncommitted" until
confirmed and is sent again with the next commit, and from the revoke callback, where
the partition is still ours. A commit that never lands only means redelivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from infra.errors import FatalError
from infra.kafka import consumer_config
from infra.settings import Settings

log = structlog.get_logger(__name__)

TopicPartitionKey = tuple[str, int]

IDLE_POLL_S = 0.5  # how long one poll waits for a first message: bounds shutdown latency


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


class KafkaEventSource:
    """Consumes `<namespace>.event.*` in the indexer's consumer group."""

    def __init__(self, settings: Settings) -> None:
        self._pattern = settings.kafka.event_topic_pattern
        self._consumer = Consumer(
            consumer_config(settings.kafka, settings.indexer.group_id, on_commit=self._on_commit)
        )
        self._batch: list[ConsumedMessage] = []
        self._uncommitted: dict[TopicPartitionKey, int] = {}
        self._assigned: set[TopicPartitionKey] = set()
        self._lock = threading.Lock()  # the service is sequential; this guards against misuse
        self.committed: dict[TopicPartitionKey, int] = {}

    # --- lifecycle ----------------------------------------------------------------------

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [self._pattern],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("consumer_subscribed", pattern=self._pattern)

    def close(self) -> None:
        """Leave the group (commits what was acknowledged via the revoke callback)."""
        with self._lock:
            self._consumer.close()
        log.info("consumer_closed")

    @property
    def assigned(self) -> frozenset[TopicPartitionKey]:
        return frozenset(self._assigned)

    # --- batches ------------------------------------------------------------------------

    def poll_batch(self, max_events: int, max_wait_s: float) -> list[ConsumedMessage]:
        """Up to `max_events` messages, waiting at most `max_wait_s` after the first one.

        Returns an empty list after `IDLE_POLL_S` without any message, so the caller can
        notice a shutdown. Consumer errors that are not fatal (broker down, a partition
        leader moving) are logged; librdkafka recovers from them by itself.
        """
        with self._lock:
            self._batch = []
            deadline: float | None = None
            while len(self._batch) < max_events:
                if deadline is None:
                    timeout = IDLE_POLL_S
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                messages = self._consumer.consume(max_events - len(self._batch), timeout)
                for message in messages:
                    error = message.error()
                    if error is None:
                        self._batch.append(ConsumedMessage.of(message))
                    else:
                        self._on_error(error)
                if not self._batch:
                    return []
                if deadline is None:
                    deadline = time.monotonic() + max_wait_s
            batch, self._batch = self._batch, []
            return batch

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Send a commit of next-offsets for acknowledged messages; returns what was sent.

        Partitions no longer assigned are skipped: their new owner commits them, and a
        commit from here could move its offset backwards. Until a commit is confirmed
        (`committed`), a restart would only redeliver events, which the index absorbs.
        """
        with self._lock:
            for key, offset in offsets.items():
                if offset > self._uncommitted.get(key, -1):
                    self._uncommitted[key] = offset
            for key in set(self._uncommitted) - self._assigned:
                del self._uncommitted[key]
            return self._send_commit(self._assigned)

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Per assigned partition: the last fetched high watermark minus the committed offset."""
        lags: dict[TopicPartitionKey, int] = {}
        for topic, partition in sorted(self._assigned):
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            committed = self.committed.get((topic, partition))
            if high is not None and high >= 0 and committed is not None:
                lags[(topic, partition)] = max(0, high - committed)
        return lags

    # --- internals (called with the lock held, or from callbacks inside consume/close) --

    def _send_commit(self, keys: set[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Send an asynchronous commit of the uncommitted offsets of `keys`."""
        wanted = {k: v for k, v in self._uncommitted.items() if k in keys}
        if not wanted:
            return {}
        partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(wanted.items())]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as e:
            error: KafkaError = e.args[0]
            if error.fatal():
                raise FatalError(f"offset commit failed fatally: {error}") from e
            log.warning("offsets_commit_failed", error=str(error), partitions=len(wanted))
            return {}
        return wanted

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            if error.code() != KafkaError._NO_OFFSET:
                log.warning("offsets_commit_failed", error=str(error), partitions=len(partitions))
            return  # stays uncommitted: sent again with the next commit
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self._confirm((tp.topic, tp.partition), tp.offset)

    def _confirm(self, key: TopicPartitionKey, offset: int) -> None:
        if self._uncommitted.get(key, -1) <= offset:
            self._uncommitted.pop(key, None)
        if offset > self.committed.get(key, -1):
            self.committed[key] = offset

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise FatalError(f"Kafka consumer failed fatally: {error}")
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            # A pattern no topic matches yet: normal before the first write to any collection.
            log.info("consumer_waiting_for_topics", error=str(error))
            return
        log.warning("consumer_error", error=str(error), code=error.code())

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("partitions_assigned", partitions=_describe(partitions))

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        # Still ours for the duration of this callback: commit what was acknowledged.
        self._send_commit(revoked & self._assigned)
        self._forget(revoked)
        for key in revoked:
            self._uncommitted.pop(key, None)
        log.info("partitions_revoked", partitions=_describe(partitions))

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Already someone else's: committing now could move the new owner's offset back.
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._forget(lost)
        for key in lost:
            self._uncommitted.pop(key, None)
        log.warning("partitions_lost", partitions=_describe(partitions))

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        self._assigned -= keys
        for key in keys:
            self.committed.pop(key, None)
        self._batch[:] = [m for m in self._batch if m.topic_partition not in keys]


def _headers(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> list[tuple[str, bytes | None]]:
    # A consumed message's headers are a list of pairs; the stubs also allow a dict.
    pairs = list(raw.items()) if isinstance(raw, dict) else raw or []
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def _describe(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
