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
from outbox_relay.checkpoint import Checkpoint, CheckpointMode, checkpoint_position
from outbox_relay.metrics import RelayMetrics
from outbox_relay.scope import ALL, CollectionScope

DEFAULT_STALL_AFTER_S = 30.0


@dataclass
class RelayState:
    """Mutable counters of one relay process; written by the relay, read by reporters."""

    name: str
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    scope: CollectionScope = ALL  # the collections this relay publishes
    role: str = "standby"  # "standby" | "active"
    last_checkpoint_time: datetime | None = None  # when the last checkpoint was committed
    last_cluster_time: Timestamp | None = None  # the oplog time that checkpoint stands for
    last_event_id: str | None = None
    # Outbox `time` of the last published record (None: not known yet in this process).
    last_record_time: datetime | None = None
    # Everything up to here is in Kafka: see `position_time`.
    position_time: datetime | None = None
    position_known: bool = False  # the checkpoint was read (or there is none)
    events_published: int = 0
    events_dead_lettered: int = 0
    batches_committed: int = 0
    heartbeats_committed: int = 0
    transactions_aborted: int = 0
    history_lost_recoveries: int = 0
    duplicates_possible: int = 0
    oplog_seconds_left: float | None = None
    backlog: int | None = None  # None: not measured yet
    # Records of collections no relay publishes (None: not measured yet), and which.
    unowned: int | None = None
    unowned_collections: list[str] = field(default_factory=list)
    oldest_unpublished_age_s: float | None = None
    monitor: ProgressMonitor = field(
        default_factory=lambda: ProgressMonitor(stall_after_s=DEFAULT_STALL_AFTER_S)
    )
    problems: dict[str, str] = field(default_factory=dict)  # dependency → what is wrong

    # --- role ----------------------------------------------------------------------------

    def became_active(self) -> None:
        self.role = "active"
        self.position_known = False
        self.metrics.active.set(1)
        # The stall clock starts now: the time spent standing by was no stall.
        self.monitor.last_progress = time.monotonic()

    def became_standby(self) -> None:
        """A standby is healthy: it has nothing to publish, so it can never be stalled."""
        self.role = "standby"
        m = self.metrics
        m.active.set(0)
        self.backlog = None
        self.unowned = None
        self.unowned_collections = []
        self.oldest_unpublished_age_s = None
        self.monitor.set_waiting(0)
        for gauge in (m.backlog, m.unowned, m.lag_seconds, m.oldest_unpublished_age_seconds):
            gauge.set(0)

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
        m = self.metrics
        events = sum(published.values())
        self.events_published += events
        self.events_dead_lettered += dead_lettered
        if heartbeat:
            self.heartbeats_committed += 1
        else:
            self.batches_committed += 1
            m.batch_size.observe(events + dead_lettered)
        for collection, count in published.items():
            m.events_published.labels(collection).inc(count)
        if dead_lettered:
            m.dlq.inc(dead_lettered)
        m.transactions.labels("committed").inc()
        m.commit_seconds.observe(seconds)
        self.position_reached(checkpoint, last_record_time=last_record_time)
        self.monitor.progressed()  # a commit proves MongoDB and Kafka both answer
        self.problems.clear()

    def aborted(self) -> None:
        """A Kafka transaction was aborted; the relay rewinds to its last checkpoint."""
        self.transactions_aborted += 1
        self.metrics.transactions.labels("aborted").inc()

    def checkpoint_loaded(self, checkpoint: Checkpoint | None) -> None:
        """The relay read its checkpoint at start (None: it never committed one)."""
        self.position_known = True
        if checkpoint is not None:
            self.position_reached(checkpoint)

    def position_reached(
        self, checkpoint: Checkpoint, *, last_record_time: datetime | None = None
    ) -> None:
        """The committed position: a checkpoint just committed or read back at start.

        See `outbox_relay.backlog.checkpoint_position`, the definition `outbox status`
        uses for its backlog too; within a process it never moves back.
        """
        self.last_checkpoint_time = checkpoint.written_at
        if checkpoint.cluster_time is not None:
            self.last_cluster_time = checkpoint.cluster_time
        self.last_event_id = checkpoint.last_event_id
        if last_record_time is not None and checkpoint.mode is CheckpointMode.STREAM:
            self.last_record_time = last_record_time
        position = checkpoint_position(checkpoint, self.last_record_time)
        candidates = [t for t in (position, self.position_time) if t is not None]
        if candidates:
            self.position_time = max(candidates)
        self._update_lag()

    # --- recovery ------------------------------------------------------------------------

    def history_lost(self) -> None:
        self.history_lost_recoveries += 1
        self.metrics.history_lost.inc()

    def duplicate_possible(self) -> None:
        self.duplicates_possible += 1
        self.metrics.duplicates_possible.inc()

    # --- periodic measurements -----------------------------------------------------------

    def oplog_window(self, seconds: float | None) -> None:
        self.oplog_seconds_left = seconds
        if seconds is not None:
            self.metrics.oplog_window_seconds.set(seconds)

    def backlog_measured(
        self,
        count: int,
        *,
        unowned: int = 0,
        unowned_collections: list[str] | None = None,
        oldest_unpublished_age_s: float | None = None,
    ) -> None:
        """A periodic count, never per event: see `outbox_relay.backlog`.

        `count`: this relay's records newer than its position; `unowned`: records of
        collections no relay publishes, which turn readiness red (nobody else will).
        """
        m = self.metrics
        self.backlog = count
        self.unowned = unowned
        self.unowned_collections = sorted(unowned_collections or [])
        self.oldest_unpublished_age_s = oldest_unpublished_age_s
        m.backlog.set(count + unowned)
        m.unowned.set(unowned)
        m.oldest_unpublished_age_seconds.set(oldest_unpublished_age_s or 0.0)
        self.monitor.set_waiting(count)
        self._update_lag()

    def _update_lag(self) -> None:
        if not self.backlog or self.position_time is None:
            self.metrics.lag_seconds.set(0)
            return
        lag = max(0.0, (datetime.now(UTC) - self.position_time).total_seconds())
        self.metrics.lag_seconds.set(lag)

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
        """`/readyz`: red on an unreachable dependency, a stall (records wait, no commit),
        or records of a collection no relay publishes."""
        ready, detail = self.monitor.readiness()
        if ready and self.role == "standby":
            return True, "standby: another relay holds the lease"
        if ready and self.unowned:
            names = ", ".join(self.unowned_collections)
            return False, (
                f"unowned: {self.unowned} outbox records in collections no relay publishes "
                f"({names}); add them to a relay's OUTBOX_RELAY_COLLECTIONS"
            )
        return ready, detail

    def status_fields(self) -> dict[str, object]:
        """The fields the lease document carries for `outbox status` and the other relays.

        `collections` registers what this relay publishes ([]: every collection), from
        which every relay and `outbox status` work out the records no relay publishes;
        `position_time` lets another relay see this one's oldest unpublished record.
        """
        return {
            "collections": self.scope.as_setting(),
            "position_time": self.position_time,
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
