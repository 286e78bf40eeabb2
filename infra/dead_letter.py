"""The dead-letter message: the original key, value and headers plus why and where from.

Written by the relay (a record Kafka refused) and the indexer (a poison event); read by
`outbox dlq list` and re-driven by `outbox dlq redrive`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from infra.envelope import KafkaMessage, format_time, headers_dict, utc_now

DLQ_ID = "dlq_id"
DLQ_ERROR = "dlq_error"
DLQ_STAGE = "dlq_stage"  # "relay" or "indexer"
DLQ_SOURCE_TOPIC = "dlq_source_topic"
DLQ_SOURCE_PARTITION = "dlq_source_partition"
DLQ_SOURCE_OFFSET = "dlq_source_offset"
DLQ_TIME = "dlq_time"
MAX_ERROR_CHARS = 2000
DLQ_HEADERS = frozenset(
    {
        DLQ_ID,
        DLQ_ERROR,
        DLQ_STAGE,
        DLQ_SOURCE_TOPIC,
        DLQ_SOURCE_PARTITION,
        DLQ_SOURCE_OFFSET,
        DLQ_TIME,
    }
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that a stage could not process and will not retry."""

    key: bytes | None
    value: bytes | None
    original_headers: list[tuple[str, bytes]]
    error: str
    stage: str
    source_topic: str
    source_partition: int = -1
    source_offset: int = -1
    dlq_id: str = ""
    time: datetime | None = None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Original headers first (kept as they were), then the dead-letter headers."""
        return [
            *[(k, v) for k, v in self.original_headers if k not in DLQ_HEADERS],
            (DLQ_ID, (self.dlq_id or str(uuid.uuid4())).encode()),
            (DLQ_ERROR, self.error[:MAX_ERROR_CHARS].encode(errors="replace")),
            (DLQ_STAGE, self.stage.encode()),
            (DLQ_SOURCE_TOPIC, self.source_topic.encode()),
            (DLQ_SOURCE_PARTITION, str(self.source_partition).encode()),
            (DLQ_SOURCE_OFFSET, str(self.source_offset).encode()),
            (DLQ_TIME, format_time(self.time or utc_now()).encode()),
        ]

    def to_message(
        self, dlq_topic: str, *, event_id: str = "", collection: str = ""
    ) -> KafkaMessage:
        """This dead letter as the message to produce on the DLQ topic."""
        return KafkaMessage(
            topic=dlq_topic,
            key=self.key,
            value=self.value,
            headers=self.kafka_headers(),
            event_id=event_id,
            collection=collection,
            dead_letter=self,
        )

    @classmethod
    def from_kafka(
        cls,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
    ) -> DeadLetter:
        h = headers_dict(headers)
        original = [(k, v or b"") for k, v in headers or [] if k not in DLQ_HEADERS]
        return cls(
            key=key,
            value=value,
            original_headers=original,
            error=h.get(DLQ_ERROR, ""),
            stage=h.get(DLQ_STAGE, ""),
            source_topic=h.get(DLQ_SOURCE_TOPIC, ""),
            source_partition=int(h.get(DLQ_SOURCE_PARTITION, "-1") or -1),
            source_offset=int(h.get(DLQ_SOURCE_OFFSET, "-1") or -1),
            dlq_id=h.get(DLQ_ID, ""),
        )


def dead_letter_message(
    message: KafkaMessage, reason: str, dlq_topic: str, *, stage: str, keep_value: bool = True
) -> KafkaMessage:
    """The DLQ message standing in for `message`: its key and headers, why, and where from.

    `keep_value=False` drops the value, for a message refused because of its size (its
    outbox record keeps the body for a redrive).
    """
    letter = DeadLetter(
        key=message.key,
        value=message.value if keep_value else None,
        original_headers=message.headers,
        error=reason,
        stage=stage,
        source_topic=message.topic,
    )
    return letter.to_message(dlq_topic, event_id=message.event_id, collection=message.collection)
