"""The relay's progress in memory: what readiness, metrics and the lease status report.

Every change goes through one of `RelayState`'s transitions, which move the in-memory
counters (the lease document's status fields), the Prometheus metrics and the readiness
monitor together, so the three can never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bson.timestamp import Timestamp

from infra.health import ProgressMonitor
from outbox_relay import metrics
from outbox_relay.checkpoint import Checkpoint, CheckpointMode

DEFAULT_STALL_AFTER_S = 30.0


@dataclass
class RelayState:
    """Mutable counters of one relay process; written by the relay, read by reporters."""

    name: str
    role: str = "standby"  # "standby" | "active"
    last_checkpoint_time: datetime | None = None  # when the last checkpoint was committed
    last_cluster_time: Timestamp | None = None  # the oplog time that checkpoint stands for
    last_event_id: str | None = None
    # Outbox `time` of the last published record (None: not known yet in this process).
    last_record_time: datetime | None = None
    # Everything up to here is in Kafka: see `position_time`.
    position_time: datetime | None = None
    events_published: int = 0
    events_dead_lettered: int = 0
    batches_committed: int = 0
    heartbeats_committed: int = 0
    transactions_aborted: int = 0
    history_lost_recoveries: int = 0
    duplicates_possible: int = 0
    oplog_seconds_left: float | None = None
    backlog: int | None = None  # None: not measured yet
    monitor: ProgressMonitor = field(
        default_factory=lambda: ProgressMonitor(stall_after_s=DEFAULT_STALL_AFTER_S)
    )
    problems: dict[str, str] = field(default_factory=dict)  # dependency → what is wrong

    # --- role ----------------------------------------------------------------------------

    def became_active(self) -> None:
        self.role = "active"
        metrics.ACTIVE.set(1)
        # The stall clock starts now: the time spent standing by was no stall.
        self.monitor.last_progress = time.monotonic()

    def became_standby(self) -> None:
        """A standby is healthy: it has nothing to publish, so it can never be stalled."""
        self.role = "standby"
        metrics.ACTIVE.set(0)
        self.backlog = None
        self.monitor.set_waiting(0)
        metrics.BACKLOG.set(0)
        metrics.LAG_SECONDS.set(0)

    # --- Kafka transactions --------------------------------------------------------------

    def committed(
        self,
        checkpoint: Checkpoint,
        *,
        published: Mapping[str, int],
        dead_lettered: int,
        last_record_time: datetime | None,
        heartbeat: bool,
        seconds: float,
    ) -> None:
        """A Kafka transaction (events + checkpoint) committed."""
        events = sum(published.values())
        self.events_published += events
        self.events_dead_lettered += dead_lettered
        if heartbeat:
            self.heartbeats_committed += 1
        else:
            self.batches_committed += 1
            metrics.BATCH_SIZE.observe(events + dead_lettered)
        for collection, count in published.items():
            metrics.EVENTS_PUBLISHED.labels(collection).inc(count)
        if dead_lettered:
            metrics.DLQ.inc(dead_lettered)
        metrics.TRANSACTIONS.labels("committed").inc()
        metrics.COMMIT_SECONDS.observe(seconds)
        self.position_reached(checkpoint, last_record_time=last_record_time)
        self.monitor.progressed()  # a commit proves MongoDB and Kafka both answer
        self.problems.clear()

    def aborted(self) -> None:
        """A Kafka transaction was aborted; the relay rewinds to its last checkpoint."""
        self.transactions_aborted += 1
        metrics.TRANSACTIONS.labels("aborted").inc()

    def position_reached(
        self, checkpoint: Checkpoint, *, last_record_time: datetime | None = None
    ) -> None:
        """The committed position: a checkpoint just committed or read back at start.

        The position is the later of the last published record's outbox time and, in
        stream mode, the checkpoint's oplog time (heartbeats move it on while the outbox
        is idle) — the definition `outbox status` uses for its backlog.
        """
        self.last_checkpoint_time = checkpoint.written_at
        if checkpoint.cluster_time is not None:
            self.last_cluster_time = checkpoint.cluster_time
        self.last_event_id = checkpoint.last_event_id
        if last_record_time is not None:
            self.last_record_time = last_record_time
        candidates = [t for t in (self.last_record_time, self.position_time) if t is not None]
        if checkpoint.mode is CheckpointMode.STREAM and checkpoint.wall_time is not None:
            candidates.append(checkpoint.wall_time)
        if candidates:
            self.position_time = max(candidates)
        self._update_lag()

    # --- recovery ------------------------------------------------------------------------

    def history_lost(self) -> None:
        self.history_lost_recoveries += 1
        metrics.HISTORY_LOST.inc()

    def duplicate_possible(self) -> None:
        self.duplicates_possible += 1
        metrics.DUPLICATES_POSSIBLE.inc()

    # --- periodic measurements -----------------------------------------------------------

    def oplog_window(self, seconds: float | None) -> None:
        self.oplog_seconds_left = seconds
        if seconds is not None:
            metrics.OPLOG_WINDOW_SECONDS.set(seconds)

    def backlog_measured(self, count: int) -> None:
        """Outbox records newer than the position (a periodic count, never per event)."""
        self.backlog = count
        metrics.BACKLOG.set(count)
        self.monitor.set_waiting(count)
        self._update_lag()

    def _update_lag(self) -> None:
        if not self.backlog or self.position_time is None:
            metrics.LAG_SECONDS.set(0)
            return
        metrics.LAG_SECONDS.set(max(0.0, (datetime.now(UTC) - self.position_time).total_seconds()))

    # --- dependencies --------------------------------------------------------------------

    def dependency_down(self, dependency: str, error: str) -> None:
        """MongoDB or Kafka did not answer: readiness is red until it does again."""
        self.problems[dependency] = f"{dependency} unreachable: {error}"
        self.monitor.report_problem("; ".join(self.problems.values()))

    def dependency_up(self, dependency: str) -> None:
        if self.problems.pop(dependency, None) is None:
            return
        if self.problems:
            self.monitor.report_problem("; ".join(self.problems.values()))
        else:
            self.monitor.problem = None

    async def readiness(self) -> tuple[bool, str]:
        """`/readyz`: red on an unreachable dependency or a stall (records wait, no commit)."""
        ready, detail = self.monitor.readiness()
        if ready and self.role == "standby":
            return True, "standby: another relay holds the lease"
        return ready, detail

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
