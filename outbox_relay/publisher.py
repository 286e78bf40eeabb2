"""`KafkaEventPublisher`: one Kafka transaction per batch of events plus its checkpoint.

The `EventPublisher` adapter for confluent-kafka. Its transactional calls block, so every
producer call runs on one dedicated thread (the producer's transactional API must not be
used from several threads at once; confluent-kafka's asyncio producer is still
experimental). Errors are mapped here, where they enter:

- a retriable error of `commit_transaction` (e.g. a slow broker: the commit goes on in
  the background): the commit is called again, the transaction is not aborted;
- `txn_requires_abort()` (and anything else that is not fatal): the transaction is
  aborted and `TransactionAbortedError` tells the relay to rewind to its last checkpoint;
- `fatal()` (fenced by a newer relay with the same `transactional.id`): `FatalError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from infra.envelope import KafkaMessage
from infra.errors import FatalError
from infra.kafka import (
    compacted,
    ensure_topics,
    event_topic_config,
    map_kafka_error,
    produce,
    producer_config,
)
from infra.settings import Settings
from outbox_relay.checkpoint import Checkpoint
from outbox_relay.ports import BatchOutcome, LeaseCheckFailedError, TransactionAbortedError
from outbox_relay.refusal import dead_letter_for, without_value

log = structlog.get_logger(__name__)

T = TypeVar("T")

INIT_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 30.0
# A commit that keeps timing out is retried this long before the relay gives up (exits).
COMMIT_GIVE_UP_S = 300.0
ABORT_TIMEOUT_S = 30.0
ABORT_ATTEMPTS = 3
POLL_EVERY = 256  # messages produced between two polls for delivery reports


def transactional_id(settings: Settings) -> str:
    """Derived from the relay name only: a standby or restart fences the previous holder."""
    return f"{settings.kafka.namespace}.relay.{settings.relay.name}"


_PERMANENT_REFUSALS = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG_SIZE,
}


class KafkaEventPublisher:
    """The relay's transactional producer (see the module docstring)."""

    def __init__(self, settings: Settings, *, commit_timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._commit_timeout_s = commit_timeout_s
        self.transactional_id = transactional_id(settings)
        self.checkpoint_topic = settings.kafka.relay_checkpoint_topic(settings.relay.name)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-producer")
        self._producer: Producer | None = None
        self._known_topics: set[str] = set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Create the relay's topics and the producer; `init_transactions` fences zombies.

        It also aborts a transaction a dead holder left open, which read_committed readers
        (our checkpoint reader included) would otherwise wait on.
        """
        await ensure_topics(
            self._kafka, {self.checkpoint_topic: compacted(self._kafka)}, partitions=1
        )
        await ensure_topics(self._kafka, {self._kafka.dlq_topic: event_topic_config(self._kafka)})
        await self._call(self._init_blocking)
        log.info("producer_initialised", transactional_id=self.transactional_id)

    def _init_blocking(self) -> None:
        config = producer_config(
            self._kafka,
            **{
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": 60000,
                # The Java clients' partitioner: a key lands where other Kafka tooling expects it.
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "batch.size": 1024 * 1024,
                "queue.buffering.max.messages": 1_000_000,
            },
        )
        producer = Producer(config)
        try:
            producer.init_transactions(INIT_TIMEOUT_S)
        except KafkaException as e:
            raise map_kafka_error(e, "init_transactions") from e
        self._producer = producer

    async def ensure_event_topics(self, topics: set[str]) -> None:
        """Create event topics on demand, with the configured partitions."""
        missing = topics - self._known_topics
        if not missing:
            return
        config = event_topic_config(self._kafka)
        try:
            await ensure_topics(self._kafka, dict.fromkeys(sorted(missing), config))
        except KafkaException as e:  # e.g. the broker did not answer the metadata request
            raise map_kafka_error(e) from e
        self._known_topics |= missing

    async def commit(
        self,
        messages: list[KafkaMessage],
        checkpoint: Checkpoint,
        still_leader: Callable[[], bool],
        isolate: frozenset[str] = frozenset(),
    ) -> BatchOutcome:
        """Publish `messages` and `checkpoint` in one transaction.

        Events in `isolate` are sent in produce requests of their own: when the broker
        refuses a request, every event in it fails, so a suspect is isolated to learn
        whether it is the one at fault.
        """
        return await self._call(self._commit_blocking, messages, checkpoint, still_leader, isolate)

    def _commit_blocking(
        self,
        messages: list[KafkaMessage],
        checkpoint: Checkpoint,
        still_leader: Callable[[], bool],
        isolate: frozenset[str],
    ) -> BatchOutcome:
        producer = self._producer
        assert producer is not None, "start() first"
        outcome = BatchOutcome()
        by_collection = outcome.by_collection
        sent = 0
        refused: dict[str, str] = {}

        def on_delivery(event_id: str) -> Callable[[KafkaError | None, Message], None]:
            def report(err: KafkaError | None, _msg: Message) -> None:
                if err is not None and err.code() in _PERMANENT_REFUSALS:
                    refused[event_id] = f"{err.name()}: {err.str()}"

            return report

        try:
            producer.begin_transaction()
            for message in messages:
                to_send = message
                alone = message.event_id in isolate
                if alone:
                    producer.flush(COMMIT_TIMEOUT_S)
                try:
                    produce(producer, to_send, on_delivery(message.event_id))
                except KafkaException as e:
                    err: KafkaError = e.args[0]
                    if err.code() not in _PERMANENT_REFUSALS or (
                        message.dead_letter is not None and message.value is None
                    ):
                        raise
                    # Refused before it left the client (bigger than message.max.bytes):
                    # an event goes to the DLQ, a dead letter loses its value.
                    to_send = (
                        without_value(message)
                        if message.dead_letter is not None
                        else dead_letter_for(
                            message, f"{err.name()}: {err.str()}", self._kafka.dlq_topic
                        )
                    )
                    produce(producer, to_send, on_delivery(message.event_id))
                if alone:
                    producer.flush(COMMIT_TIMEOUT_S)
                sent += 1
                if sent % POLL_EVERY == 0:
                    producer.poll(0)  # serve delivery reports now and then, not per message
                if to_send.dead_letter is not None:
                    outcome.dead_lettered.append(message.event_id)
                else:
                    by_collection[message.collection] = by_collection.get(message.collection, 0) + 1
            produce(
                producer,
                KafkaMessage(
                    topic=self.checkpoint_topic,
                    key=checkpoint.kafka_key(),
                    value=checkpoint.kafka_value(),
                    headers=[],
                    event_id="",
                ),
                None,
            )
            if not still_leader():
                self._abort(producer)
                raise LeaseCheckFailedError("lease lost before commit; transaction aborted")
            self._commit_transaction(producer)
            outcome.published = sum(by_collection.values())
        except KafkaException as e:
            err = e.args[0]
            if err.fatal():
                raise FatalError(f"Kafka producer fatal error (fenced?): {err}") from e
            self._abort(producer)
            raise TransactionAbortedError(f"transaction aborted: {err}", refused) from e
        return outcome

    def _commit_transaction(self, producer: Producer) -> None:
        """Commit; a retriable error (the commit goes on in the background) is retried.

        Aborting instead would only meet librdkafka's "conflicting commit in progress"
        and turn a slow broker into a crash. Abortable and other errors propagate.
        """
        give_up = time.monotonic() + COMMIT_GIVE_UP_S
        while True:
            try:
                producer.commit_transaction(self._commit_timeout_s)
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if err.fatal() or err.txn_requires_abort() or not err.retriable():
                    raise
                if time.monotonic() > give_up:
                    raise FatalError(f"the Kafka commit did not finish: {err}") from e
                log.warning("commit_retried", error=str(err))
                continue
            return

    @staticmethod
    def _abort(producer: Producer) -> None:
        for attempt in range(1, ABORT_ATTEMPTS + 1):
            try:
                producer.abort_transaction(ABORT_TIMEOUT_S)
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if err.fatal() or attempt == ABORT_ATTEMPTS or not err.retriable():
                    if err.code() == KafkaError._STATE:
                        return  # no transaction in progress: nothing to abort
                    raise FatalError(f"could not abort the Kafka transaction: {err}") from e
                continue
            return

    async def close(self) -> None:
        """Wait for an in-flight call to finish, then drop the producer."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._producer = None
