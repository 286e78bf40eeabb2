"""Dead-letter writer: poison events go to `outbox.dlq`, acknowledged before offsets move on."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, Producer

from infra.dead_letter import DeadLetter
from infra.errors import FatalError, PipelineError
from infra.kafka import produce, producer_config
from infra.settings import KafkaSettings

log = structlog.get_logger(__name__)

_SERVE_INTERVAL_S = 0.5
# Undelivered reports come back after this long, so every retry is logged.
_MESSAGE_TIMEOUT_MS = 30_000


class DeadLetterAbandonedError(PipelineError):
    """Shutdown came before every dead letter was acknowledged; offsets must not move."""


class KafkaDeadLetterWriter:
    """Produces dead letters with an idempotent producer; `deliver` blocks (run it in a thread).

    librdkafka retries a message itself until ``message.timeout.ms``; the service produces
    what it finally gives up on again under `infra.retry`, so a dead letter is never
    dropped while Kafka is away. `close()` makes a waiting `deliver` give up.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._topic = settings.dlq_topic
        self._producer = Producer(
            producer_config(settings, **{"linger.ms": 0, "message.timeout.ms": _MESSAGE_TIMEOUT_MS})
        )
        self._closing = threading.Event()

    @property
    def topic(self) -> str:
        return self._topic

    def deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Produce `letters`, wait for every delivery report, return the undelivered ones.

        The caller retries what comes back (librdkafka has retried each for
        ``message.timeout.ms`` already). Raises `FatalError` for a fatal producer error and
        `DeadLetterAbandonedError` when `close()` interrupts the wait.
        """
        results: dict[int, KafkaError | None] = {}
        for i, letter in enumerate(letters):
            produce(self._producer, letter.to_message(self._topic), _recorder(results, i))
        while len(results) < len(letters):
            self._producer.flush(_SERVE_INTERVAL_S)
            if self._closing.is_set() and len(results) < len(letters):
                raise DeadLetterAbandonedError("shutdown before the DLQ acknowledged")
        undelivered: list[DeadLetter] = []
        for i, err in sorted(results.items()):
            if err is None:
                continue
            if err.fatal():
                raise FatalError(f"DLQ producer failed fatally: {err}")
            log.warning("dead_letter_undelivered", error=str(err), topic=self._topic)
            undelivered.append(letters[i])
        return undelivered

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
