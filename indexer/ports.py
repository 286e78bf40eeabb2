"""The indexer's adapters as small Protocols: the loop in `indexer.pipeline` depends on these,
so tests and the benchmark can swap any of them (Kafka source, Elasticsearch sink, DLQ)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from indexer.batch import ItemOutcome
from indexer.consumer import ConsumedMessage, TopicPartitionKey
from infra.dead_letter import DeadLetter
from infra.parked_report import ParkedReport


class EventSource(Protocol):
    """Where events come from (`indexer.consumer.KafkaEventSource`)."""

    def start(self) -> None: ...

    async def next_batch(self, max_events: int) -> list[ConsumedMessage]: ...

    def acknowledge(self, messages: Iterable[ConsumedMessage]) -> dict[TopicPartitionKey, int]: ...

    def hold(self, topics: Iterable[str]) -> None: ...

    @property
    def assigned(self) -> frozenset[TopicPartitionKey]: ...

    def stop(self) -> None: ...


class IndexSink(Protocol):
    """Where events go (`indexer.sink.ElasticsearchSink`)."""

    async def ensure_index(self, collection: str) -> str: ...

    def forget(self, collection: str) -> None: ...

    async def bulk(self, bodies: Sequence[bytes]) -> list[ItemOutcome]: ...


class DeadLetterSink(Protocol):
    """Where poison events go (`indexer.dlq_writer.KafkaDeadLetterWriter`); `deliver` blocks."""

    async def prepare(self) -> None: ...

    def deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]: ...

    def close(self) -> None: ...

    def shutdown(self) -> None: ...


class ParkingReporter(Protocol):
    """Where the parked collections are reported (`indexer.parking_report`); `publish` blocks."""

    async def prepare(self) -> None: ...

    def publish(self, report: ParkedReport) -> None: ...

    def close(self) -> None: ...
