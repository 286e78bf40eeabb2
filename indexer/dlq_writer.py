"""Dead-letter writer: poison events go to `outbox.dlq`, acknowledged before offsets move on.

The DLQ topic is created (if missing) through the shared helper with the event topics'
`max.message.bytes`, so a dead letter as large as an event fits. A dead letter Kafka still
refuses as too large (a DLQ topic created smaller before, or an event near the limit plus
the dead-letter headers, which `produce()` refuses at once with a `KafkaException`) is
written again without its value: the original headers and the error stay, and the
outbox record keeps the body for a redrive. Any other failure is retried by the service
with backoff; a fatal producer error replaces the producer. Nothing here stops the process.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from infra.dead_letter import DeadLetter
from infra.errors import FatalError, PipelineError, RetriableError
from infra.kafka import ensure_topics, event_topic_config, produce, producer_config
from infra.settings import KafkaSettings

log = structlog.get_logger(__name__)

_SERVE_INTERVAL_S = 0.5
# Undelivered reports come back after this long, so every retry is logged.
_MESSAGE_TIMEOUT_MS = 30_000
# Kafka's answers for a message too large for the producer, the topic or the broker.
TOO_LARGE = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)


class DeadLetterAbandonedError(PipelineError):
    """Shutdown came before every dead letter was acknowledged; offsets must not move."""


def shrunk(letter: DeadLetter, why: str) -> DeadLetter | None:
    """A smaller dead letter for one Kafka refused as too large: first without its value,
    then also without the original headers (the error and the source position stay, and
    the outbox record keeps the body for a redrive). None when nothing is left to drop."""
    if letter.value is not None:
        return dataclasses.replace(
            letter,
            value=None,
            error=f"{letter.error} (value dropped: {why}; the outbox record keeps the body)",
        )
    if letter.original_headers:
        return dataclasses.replace(
            letter, original_headers=[], error=f"{letter.error} (headers dropped: {why})"
        )
    return None


class KafkaDeadLetterWriter:
    """Produces dead letters with an idempotent producer; `deliver` blocks (run it in a thread).

    librdkafka retries a message itself until ``message.timeout.ms``; the service produces
    what it finally gives up on again under `infra.retry`, so a dead letter is never
    dropped while Kafka is away. `close()` makes a waiting `deliver` give up.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._topic = settings.dlq_topic
        self._producer = self._new_producer()
        self._closing = threading.Event()

    def _new_producer(self) -> Producer:
        return Producer(
            producer_config(
                self._settings, **{"linger.ms": 0, "message.timeout.ms": _MESSAGE_TIMEOUT_MS}
            )
        )

    async def prepare(self) -> None:
        """Create the DLQ topic if missing, sized like the event topics; any failure is
        `RetriableError` (the dead letters wait, the process stays up)."""
        try:
            await ensure_topics(self._settings, {self._topic: event_topic_config(self._settings)})
        except FatalError as e:
            raise RetriableError(f"creating the DLQ topic {self._topic}: {e}") from e

    def deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Produce `letters`, wait for every delivery report, return what to try again.

        A returned letter may be a value-less version of one passed in (too large).
        Raises `RetriableError` after replacing a producer that failed fatally, and
        `DeadLetterAbandonedError` when `close()` interrupts the wait.
        """
        try:
            return self._deliver(letters)
        except FatalError as e:
            log.error("dlq_producer_replaced", error=str(e))  # noqa: TRY400 - no traceback needed
            self._producer.purge()
            self._producer.close()
            self._producer = self._new_producer()
            raise RetriableError(f"DLQ producer failed fatally and was replaced: {e}") from e

    def _deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        results: dict[int, KafkaError | None] = {}
        retry: list[DeadLetter] = []
        sent: list[DeadLetter] = []
        for letter in letters:
            queued = self._queue(letter, results, len(sent))
            if queued is None:
                retry.append(letter)
            else:
                sent.append(queued)
        while len(results) < len(sent):
            self._producer.flush(_SERVE_INTERVAL_S)
            if self._closing.is_set() and len(results) < len(sent):
                raise DeadLetterAbandonedError("shutdown before the DLQ acknowledged")
        for i, err in sorted(results.items()):
            if err is None:
                continue
            if err.fatal():
                raise FatalError(f"DLQ producer failed fatally: {err}")
            log.warning("dead_letter_undelivered", error=str(err), topic=self._topic)
            letter = sent[i]
            if err.code() in TOO_LARGE:
                letter = shrunk(letter, f"{err.name()}: {err.str()}") or letter
            retry.append(letter)
        return retry

    def _queue(
        self, letter: DeadLetter, results: dict[int, KafkaError | None], i: int
    ) -> DeadLetter | None:
        """Queue `letter` (shrunk if `produce()` refuses its size at once); None when it
        must be tried again later."""
        while True:
            try:
                produce(self._producer, letter.to_message(self._topic), _recorder(results, i))
            except KafkaException as e:
                error: KafkaError = e.args[0]
                if error.fatal():
                    raise FatalError(f"DLQ producer failed fatally: {error}") from e
                smaller = shrunk(letter, f"{error.name()}: {error.str()}")
                if error.code() in TOO_LARGE and smaller is not None:
                    letter = smaller
                    continue
                log.warning("dead_letter_undelivered", error=str(error), topic=self._topic)
                return None
            return letter

    def close(self) -> None:
        """Make a waiting `deliver` give up (shutdown)."""
        self._closing.set()

    def shutdown(self) -> None:
        """Release the producer (blocking). Anything still queued belongs to a batch whose
        offsets were not committed, so it is dropped here and produced again on redelivery."""
        self._closing.set()
        self._producer.purge()
        self._producer.close()


def _recorder(results: dict[int, KafkaError | None], i: int) -> Any:
    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        results[i] = err

    return on_delivery
