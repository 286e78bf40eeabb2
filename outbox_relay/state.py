"""The relay's progress in memory: what health checks, metrics and the lease status report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from bson.timestamp import Timestamp


@dataclass
class RelayState:
    """Mutable counters of one relay process; written by the relay, read by reporters."""

    name: str
    role: str = "standby"  # "standby" | "active"
    last_checkpoint_time: datetime | None = None  # when the last checkpoint was committed
    last_cluster_time: Timestamp | None = None  # the oplog time that checkpoint stands for
    last_event_id: str | None = None
    events_published: int = 0
    events_dead_lettered: int = 0
    batches_committed: int = 0
    heartbeats_committed: int = 0
    transactions_aborted: int = 0
    history_lost_recoveries: int = 0
    duplicates_possible: int = 0
    oplog_seconds_left: float | None = None
    last_progress_monotonic: float = field(default_factory=time.monotonic)

    def progressed(self) -> None:
        self.last_progress_monotonic = time.monotonic()

    def status_fields(self) -> dict[str, object]:
        """The fields the lease document carries for `outbox status`."""
        return {
            "role": self.role,
            "last_checkpoint_time": self.last_checkpoint_time,
            "last_cluster_time": self.last_cluster_time,
            "last_event_id": self.last_event_id,
            "events_published": self.events_published,
            "events_dead_lettered": self.events_dead_lettered,
            "batches_committed": self.batches_committed,
            "history_lost_recoveries": self.history_lost_recoveries,
            "duplicates_possible": self.duplicates_possible,
            "oplog_seconds_left": self.oplog_seconds_left,
        }
