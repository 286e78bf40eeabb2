"""What the relay's loop needs from Kafka, as a small Protocol (adapter: `publisher.py`).

`OutboxRelay` depends on `EventPublisher`, not on confluent-kafka, so tests and the
benchmark can hand it another implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from infra.envelope import KafkaMessage
from infra.errors import RetriableError
from outbox_relay.checkpoint import Checkpoint


@dataclass
class BatchOutcome:
    """What a committed batch contained."""

    published: int = 0
    dead_lettered: list[str] = field(default_factory=list)
    by_collection: dict[str, int] = field(default_factory=dict)  # published per collection


class TransactionAbortedError(RetriableError):
    """The batch's transaction was aborted: rewind to the last checkpoint and retry.

    `refused` maps event ids Kafka refused for good (too large) to the reason; those go
    to the dead-letter topic on the retry.
    """

    def __init__(self, message: str, refused: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.refused = refused or {}


class LeaseCheckFailedError(RetriableError):
    """The lease was no longer held at commit time: the transaction was aborted."""


class EventPublisher(Protocol):
    """Publishes batches of events with the checkpoint after them, atomically."""

    async def start(self) -> None:
        """Create the relay's topics and fence every older holder of the relay's name."""

    async def ensure_event_topics(self, topics: set[str]) -> None:
        """Create the event topics not created yet."""

    async def commit(
        self,
        messages: list[KafkaMessage],
        checkpoint: Checkpoint,
        still_leader: Callable[[], bool],
        isolate: frozenset[str] = frozenset(),
    ) -> BatchOutcome:
        """`messages` and `checkpoint` in one transaction; `isolate`: produce these alone."""

    async def close(self) -> None:
        """Wait for a call in flight, then let go of the producer."""
