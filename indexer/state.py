"""What the indexer has done so far, in memory: the source for a later health/metrics endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

TopicPartitionKey = tuple[str, int]


@dataclass
class IndexerState:
    """Counters and positions, updated by the service after each batch."""

    events_consumed: int = 0
    events_applied: int = 0  # Elasticsearch took the write
    events_already_applied: int = 0  # 409, or superseded by a newer event in the same batch
    events_dead_lettered: int = 0
    batches: int = 0
    retries: int = 0  # Elasticsearch or DLQ attempts that failed and were retried
    retrying_since: float | None = None  # monotonic time of the first failed try, if failing
    last_progress: float | None = None  # monotonic time of the last committed batch
    committed_offsets: dict[TopicPartitionKey, int] = field(default_factory=dict)
    lag: dict[TopicPartitionKey, int] = field(default_factory=dict)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def seconds_since_progress(self, now: float | None = None) -> float | None:
        if self.last_progress is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_progress
