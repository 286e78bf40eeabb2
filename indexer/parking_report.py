"""Publishes this indexer's parked collections for `outbox status` (`infra.parked_report`)."""

from __future__ import annotations

from confluent_kafka import KafkaException, Producer

from infra.errors import RetriableError
from infra.kafka import compacted, ensure_topics, producer_config
from infra.parked_report import ParkedReport, parked_topic
from infra.settings import KafkaSettings

FLUSH_TIMEOUT_S = 5.0


class KafkaParkingReporter:
    """Writes the latest report per instance to the compacted report topic."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._topic = parked_topic(settings)
        self._producer = Producer(producer_config(settings, **{"linger.ms": 0}))

    async def prepare(self) -> None:
        await ensure_topics(self._settings, {self._topic: compacted(self._settings)}, partitions=1)

    def publish(self, report: ParkedReport) -> None:
        """Write `report` and wait for it (blocking); `RetriableError` if Kafka did not take it."""
        errors: list[str] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        try:
            self._producer.produce(
                self._topic,
                key=report.kafka_key(),
                value=report.kafka_value(),
                on_delivery=on_delivery,
            )
        except (KafkaException, BufferError) as e:
            raise RetriableError(f"reporting parked collections: {e}") from e
        if self._producer.flush(FLUSH_TIMEOUT_S) > 0 or errors:
            raise RetriableError(f"reporting parked collections: {errors or 'timed out'}")

    def close(self) -> None:
        """Release the producer (blocking)."""
        self._producer.purge()
        self._producer.close()
