"""Re-emitting events into the pipeline: an idempotent Kafka producer driven from a thread.

Replay, reconcile --repair and DLQ redrive all end here. Messages keep their original
event id (`ce_id` and Debezium's `id`) and gain `ce_replayed: true`; the indexer's
external versions make a re-emitted event that Elasticsearch already holds a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from infra.envelope import CE_REPLAYED, KafkaMessage, OutboxRecord
from infra.errors import PipelineError
from infra.kafka import ensure_topics as ensure_kafka_topics
from infra.kafka import event_topic_config, map_kafka_error, produce, producer_config
from infra.settings import KafkaSettings

log = structlog.get_logger(__name__)

FLUSH_TIMEOUT_S = 60.0


class DeliveryFailedError(PipelineError):
    """Kafka refused or never acknowledged some re-emitted events; re-run the command."""


def replay_of(record: OutboxRecord, settings: KafkaSettings) -> KafkaMessage:
    """`record` as the relay published it, plus the replayed marker."""
    return record.to_kafka(settings.event_topic(record.collection), replayed=True)


def mark_replayed(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """`headers` with exactly one `ce_replayed: true`."""
    return [*[(k, v) for k, v in headers if k != CE_REPLAYED], (CE_REPLAYED, b"true")]


class KafkaReemitter:
    """Produces re-emitted events; `flush()` at the end of a command waits for every ack."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer = Producer(producer_config(settings))
        self._failures: list[str] = []
        self._topics_ready: set[str] = set()
        self.produced = 0
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self._failures.append(f"{msg.topic()}: {err}")

    def _produce_blocking(self, events: Sequence[KafkaMessage]) -> None:
        for event in events:
            try:
                produce(self._producer, event, self._on_delivery)
            except KafkaException as e:
                raise map_kafka_error(e, f"producing to {event.topic}") from e
            self.produced += 1
        self._producer.poll(0)

    async def ensure_topics(self, topics: set[str]) -> None:
        """Event topics the relay normally creates; a repair may be the first writer."""
        missing = topics - self._topics_ready
        if missing:
            config = event_topic_config(self._settings)
            await ensure_kafka_topics(self._settings, dict.fromkeys(missing, config))
            self._topics_ready |= missing

    async def publish(self, events: Sequence[KafkaMessage]) -> None:
        """Hand `events` to the producer (does not wait for acknowledgements)."""
        if not events:
            return
        await self.ensure_topics({e.topic for e in events})
        await asyncio.to_thread(self._produce_blocking, events)

    async def flush(self) -> None:
        """Wait for every produced event; `DeliveryFailedError` names what Kafka refused."""
        remaining: int = await asyncio.to_thread(self._producer.flush, FLUSH_TIMEOUT_S)
        if remaining:
            raise DeliveryFailedError(
                f"{remaining} events were not acknowledged by Kafka at "
                f"{self._settings.bootstrap} within {FLUSH_TIMEOUT_S:.0f}s"
            )
        if self._failures:
            raise DeliveryFailedError(
                f"Kafka refused {len(self._failures)} events, e.g. {self._failures[0]}"
            )
