"""The audit's counting rules: pure functions, no I/O (the readers live in `audit`).

Vocabulary (docs/operating.md has the operator's version):

- an **original** copy of an event is a message without the `ce_replayed` marker; a
  **replayed** copy is one an operator re-emitted on purpose (`outbox replay`, reconcile
  `--repair`, DLQ redrive) and is never a duplicate;
- an event is **known** in a topic when an outbox record of the window has its id and
  that topic's collection;
- **judged until**: outbox records stamped at or before this time must be in Kafka by now
  (the relay's committed position minus a grace period); later ones may still be on
  their way and are *pending*, not lost.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

# `judged_until` of an audit that judges every record (the pipeline has settled).
JUDGE_ALL = datetime.max.replace(tzinfo=UTC)
MAX_EXAMPLES = 10

# --- the window --------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h30m`, `7d`, `2w` as a positive timedelta; `ValueError` otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h30m, 7d)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"the duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Judging:
    """What an audit may call a problem, given how far the pipeline has come.

    `start`: the window's first record time. `judged_until`: records stamped later are
    pending, not lost (None: nothing is judged for loss, the relay never checkpointed).
    `require_ack`: a document is judged for drift only once the indexer committed past
    its newest event (else it is *unindexed*); False once the pipeline has settled.
    """

    start: datetime
    judged_until: datetime | None
    require_ack: bool = True

    @property
    def settled(self) -> bool:
        """Everything is judged: the caller waited for the pipeline to go idle."""
        return self.judged_until == JUDGE_ALL and not self.require_ack

    def due(self, record_time: datetime) -> bool:
        """The record must be in Kafka by now."""
        return self.judged_until is not None and record_time <= self.judged_until


# --- events: lost, duplicated, replayed -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copy:
    """One message carrying an event, where it sits and whether it was replayed."""

    topic: str
    partition: int
    offset: int
    replayed: bool

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class EventState(StrEnum):
    PUBLISHED = "published"  # at least one original copy
    RECOVERED = "recovered"  # only replayed copies: the relay never published it, an operator did
    PENDING = "pending"  # no copy yet, and it may still be on its way
    LOST = "lost"  # no copy, and it should be there


@dataclass(frozen=True, slots=True)
class EventVerdict:
    state: EventState
    extra_copies: int  # original copies beyond the first: duplicates
    replayed: int


def judge_event(record_time: datetime, copies: Sequence[Copy], judging: Judging) -> EventVerdict:
    """One outbox record against its copies in its collection's topic."""
    originals = sum(1 for c in copies if not c.replayed)
    replayed = len(copies) - originals
    if originals:
        state = EventState.PUBLISHED
    elif replayed:
        state = EventState.RECOVERED
    elif judging.due(record_time):
        state = EventState.LOST
    else:
        state = EventState.PENDING
    return EventVerdict(state, max(0, originals - 1), replayed)


class UnknownKind(StrEnum):
    UNEXPECTED = "unexpected"  # an original event in the window that no outbox record backs
    REPLAYED = "replayed"  # re-emitted on purpose (reconcile may synthesise new ids)
    OUTSIDE_WINDOW = "outside_window"  # its record is older than the window, or expired


def judge_unknown(event_time: datetime, replayed: bool, judging: Judging) -> UnknownKind:
    """A message whose event id is in no outbox record of the window for its topic.

    Its event time (`ce_time`, else the Kafka timestamp) decides: older than the window,
    its record may have expired or simply not be looked at, so it is never counted.
    """
    if event_time < judging.start:
        return UnknownKind.OUTSIDE_WINDOW
    return UnknownKind.REPLAYED if replayed else UnknownKind.UNEXPECTED


# --- order: one partition per document, versions growing --------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    """One message of one document's stream (one topic and key)."""

    partition: int
    offset: int
    timestamp_ms: int
    event_id: str
    version: int
    replayed: bool
    counted: bool  # False: no record of the window backs it (a duplicate, or not judged)


@dataclass(frozen=True, slots=True)
class OrderViolation:
    event_id: str
    partition: int
    offset: int
    version: int
    reason: str


def order_violations(messages: Iterable[Placed]) -> list[OrderViolation]:
    """Where one document's original events break order, in any arrival order of `messages`.

    Only the first original copy of each event counts (by timestamp, then position):
    replays are out of order by nature and extra copies are already duplicates, so
    neither is judged again here. The document's home partition is that of its earliest
    event; each other partition it appears on is one violation, and on every partition
    each version not above the one before it is one more.
    """
    firsts: dict[str, Placed] = {}
    for m in sorted(messages, key=lambda m: (m.timestamp_ms, m.partition, m.offset)):
        if m.counted and not m.replayed:
            firsts.setdefault(m.event_id, m)
    if not firsts:
        return []
    home = next(iter(firsts.values())).partition
    by_partition = sorted(firsts.values(), key=lambda m: (m.partition, m.offset))
    violations: list[OrderViolation] = []
    for partition, group in itertools.groupby(by_partition, key=lambda m: m.partition):
        events = list(group)
        if partition != home:
            first = events[0]
            violations.append(
                OrderViolation(
                    first.event_id,
                    partition,
                    first.offset,
                    first.version,
                    f"the document's events are on partition {home} too",
                )
            )
        violations.extend(
            OrderViolation(
                after.event_id,
                after.partition,
                after.offset,
                after.version,
                f"version {after.version} after version {before.version}",
            )
            for before, after in itertools.pairwise(events)
            if after.version <= before.version
        )
    return violations


# --- documents: does Elasticsearch hold the newest version? -----------------------------


@dataclass(frozen=True, slots=True)
class State:
    """A document as one side holds it; `content` is `content_digest` of its body."""

    version: int
    deleted: bool
    content: str | None


class Outcome(StrEnum):
    IN_SYNC = "in_sync"
    UNINDEXED = "unindexed"  # the indexer has not acknowledged the newest event yet
    ASK_MONGODB = "ask_mongodb"  # Elasticsearch is ahead of the window: a newer write?
    MISSING = "missing"  # Elasticsearch holds nothing for the document
    STALE = "stale"  # an older version
    CHANGED = "changed"  # the same version with another body or deleted-flag
    AHEAD = "ahead"  # a version MongoDB never had
    EXTRA = "extra"  # a live document MongoDB does not have

    @property
    def is_drift(self) -> bool:
        return self in _DRIFT


_DRIFT = frozenset({Outcome.MISSING, Outcome.STALE, Outcome.CHANGED, Outcome.AHEAD, Outcome.EXTRA})
DRIFT_KINDS: tuple[Outcome, ...] = (
    Outcome.MISSING,
    Outcome.STALE,
    Outcome.CHANGED,
    Outcome.AHEAD,
    Outcome.EXTRA,
)


def compare(expected: State, index: State | None) -> Outcome:
    """Elasticsearch (`index`) against the version it must hold, tombstones included."""
    if index is None:
        return Outcome.MISSING
    if index.version < expected.version:
        return Outcome.STALE
    if index.version > expected.version:
        return Outcome.AHEAD
    if index.deleted != expected.deleted:
        return Outcome.CHANGED
    if not expected.deleted and index.content != expected.content:
        return Outcome.CHANGED
    return Outcome.IN_SYNC


def document_settled(
    *, record_time: datetime, acknowledged: bool, in_kafka: bool, judging: Judging
) -> bool:
    """May the document's index entry be judged yet?

    Once the indexer committed past a copy of the newest event, Elasticsearch acknowledged
    it; if the event is lost (no copy, and due), it will never come, so judge it too.
    """
    if not judging.require_ack or acknowledged:
        return True
    return not in_kafka and judging.due(record_time)


def judge_document(newest: State, index: State | None, *, settled: bool) -> Outcome:
    """A document of the window: its newest outbox record against Elasticsearch."""
    if index is not None and index.version > newest.version:
        return Outcome.ASK_MONGODB
    if not settled:
        return Outcome.UNINDEXED
    return compare(newest, index)


def judge_against_mongodb(mongo: State | None, index: State, judging: Judging) -> Outcome:
    """Elasticsearch against MongoDB's current document, for ids the window cannot settle.

    Used when Elasticsearch holds a newer version than the window's newest record, and
    for index entries of the window whose document has no record in it.
    """
    if mongo is None:
        return Outcome.IN_SYNC if index.deleted else Outcome.EXTRA
    if mongo.version > index.version:
        # A write newer than this audit's outbox snapshot, not indexed yet; once the
        # pipeline has settled nothing newer can be on its way.
        return Outcome.STALE if judging.settled else Outcome.UNINDEXED
    return compare(mongo, index)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # 1.0 and 1 are one JSON number: a server may write either back
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


def content_digest(document: Any) -> str | None:
    """A short digest of a document body (key order and 1.0-vs-1 do not matter)."""
    if document is None:
        return None
    data = orjson.dumps(_canonical(document), option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(data, digest_size=12).hexdigest()


# --- the tally ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts per category and the first `MAX_EXAMPLES` examples of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, category: str, n: int = 1, example: dict[str, Any] | None = None) -> None:
        if n <= 0:
            return
        self.counts[category] += n
        if example is not None:
            kept = self.examples.setdefault(category, [])
            if len(kept) < MAX_EXAMPLES:
                kept.append(example)
