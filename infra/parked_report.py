"""The indexer's report of its parked collections, for `outbox status`: topic and codec.

Each indexer instance writes its whole list of parked collections (possibly empty) to the
compacted topic `<namespace>.indexer.parked`, keyed by its instance id, whenever the
list changes and every `REPORT_INTERVAL_S` while it is not empty; it writes an empty list
when it starts and when it stops. `outbox status` reads the topic to its end and keeps
the latest report of each instance. A report older than `STALE_AFTER_S` comes from an
instance that died while parked: status shows it as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from infra.envelope import format_time, parse_time
from infra.settings import KafkaSettings

REPORT_INTERVAL_S = 30.0
STALE_AFTER_S = 5 * REPORT_INTERVAL_S


def parked_topic(settings: KafkaSettings) -> str:
    """`<namespace>.indexer.parked` (compacted, one partition)."""
    return f"{settings.namespace}.indexer.parked"


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    """One parked collection of one indexer instance."""

    collection: str
    reason: str
    since: datetime
    events: int


@dataclass(frozen=True, slots=True)
class ParkedReport:
    """An indexer instance's parked collections at `reported_at`."""

    instance: str
    reported_at: datetime
    parked: tuple[ParkedEntry, ...] = ()

    def kafka_key(self) -> bytes:
        return self.instance.encode()

    def kafka_value(self) -> bytes:
        return orjson.dumps(
            {
                "instance": self.instance,
                "reported_at": format_time(self.reported_at),
                "parked": [
                    {
                        "collection": e.collection,
                        "reason": e.reason,
                        "since": format_time(e.since),
                        "events": e.events,
                    }
                    for e in self.parked
                ],
            }
        )

    @classmethod
    def from_kafka(cls, value: bytes) -> ParkedReport:
        """Decode a report; raises `ValueError` for anything else."""
        try:
            raw: dict[str, Any] = orjson.loads(value)
            return cls(
                instance=str(raw["instance"]),
                reported_at=parse_time(str(raw["reported_at"])),
                parked=tuple(
                    ParkedEntry(
                        collection=str(e["collection"]),
                        reason=str(e["reason"]),
                        since=parse_time(str(e["since"])),
                        events=int(e["events"]),
                    )
                    for e in raw["parked"]
                ),
            )
        except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"not a parked-collections report: {e}") from e
