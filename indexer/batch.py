"""The indexer's batch rules, pure: no I/O, tested without servers.

- `decode`: a consumed message becomes an `Event` (its index action) or `Poison` (it can
  never be indexed: off-contract, or past Elasticsearch's limits).
- `classify_item`: Elasticsearch's answer for one bulk item, by its error *type* (not its
  status), becomes what the indexer does with the event:

  - *applied* (2xx), *already applied* (409 `version_conflict_engine_exception`):
    acknowledged, as indexed or stale.
  - *poison* (the document itself: `mapper_parsing_exception`,
    `document_parsing_exception`, `strict_dynamic_mapping_exception`, a field-limit
    `illegal_argument_exception`, an id too long, ...): the event goes to the DLQ.
  - *retry* (Elasticsearch pushing back: `es_rejected_execution_exception`,
    `circuit_breaking_exception`, another 429): the batch waits and sends them again.
  - *index missing* (404 `index_not_found_exception`): the index and alias are created
    again, then the events are sent again.
  - *park* (anything about the index: `cluster_block_exception` from a write block or the
    flood-stage watermark, `index_closed_exception`, `security_exception`, no write index
    behind the alias, 5xx, unknown types): the collection is parked (`indexer.parking`).

  Unknown errors park rather than dead-letter: a parked collection is visible (readiness,
  metric, `outbox status`) and resumes by itself once its index is fixed; a dead-lettered
  event needs an operator's redrive.
- `plan_round` / `settle`: what one bulk round sends and what its answers mean. Within a
  batch only each document's newest version is sent (an older one would be a 409 once the
  newer is in). If that newest version is poison it goes to the DLQ and the next newest
  version of the document is sent in the next round, and so on, so the document ends at
  its newest *indexable* version. An older version is acknowledged (as stale) only once a
  newer version of its document is applied (or found already applied), or when it is
  itself applied or dead-lettered.
- `chunks`: a round's events as bulk requests capped by events and by bytes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from indexer.consumer import ConsumedMessage
from indexer.projection import IndexAction, ProjectionError, action_for, check_indexable
from infra.envelope import EnvelopeError, OutboxRecord
from infra.index_limits import IndexLimits

INDEXED = "indexed"
STALE = "stale"
DLQ = "dlq"


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event on its way to Elasticsearch, with its bulk lines serialised once."""

    message: ConsumedMessage
    record: OutboxRecord
    action: IndexAction
    body: bytes  # the action's NDJSON lines

    @property
    def collection(self) -> str:
        return self.record.collection

    @property
    def document(self) -> tuple[str, str]:
        """(collection, document id): the unit of ordering and of staleness."""
        return (self.record.collection, self.record.document_id)

    @property
    def position(self) -> tuple[str, int, int]:
        """(topic, partition, offset)."""
        return (self.message.topic, self.message.partition, self.message.offset)


@dataclass(frozen=True, slots=True)
class Poison:
    """An event no retry can index: it goes to the DLQ."""

    message: ConsumedMessage
    record: OutboxRecord | None
    collection: str
    error: str


def decode(
    messages: Iterable[ConsumedMessage],
    *,
    topic_prefix: str,
    alias_for: Callable[[str], str],
    limits_for: Callable[[str], IndexLimits],
    indexed_at: datetime,
) -> tuple[list[Event], list[Poison]]:
    """Each message as an `Event`, or as `Poison` if it can never be indexed."""
    events: list[Event] = []
    poison: list[Poison] = []
    for message in messages:
        topic_collection = message.topic.removeprefix(topic_prefix)
        record: OutboxRecord | None = None
        try:
            record = OutboxRecord.from_kafka(
                key=message.key, value=message.value, headers=message.headers
            )
            check_indexable(
                record, topic_collection=topic_collection, limits=limits_for(record.collection)
            )
            action = action_for(record, alias=alias_for(record.collection), indexed_at=indexed_at)
        except (EnvelopeError, ProjectionError) as e:
            collection = record.collection if record is not None else topic_collection
            poison.append(Poison(message, record, collection, str(e)))
            continue
        events.append(Event(message, record, action, action.ndjson()))
    return events, poison


# --- Elasticsearch's answers ------------------------------------------------------------


class Outcome(enum.Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    POISON = "poison"
    RETRY = "retry"
    INDEX_MISSING = "index_missing"
    PARK = "park"


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    outcome: Outcome
    error: str = ""


APPLIED = ItemOutcome(Outcome.APPLIED)

# Errors about the document itself: the same document fails the same way every time.
DOCUMENT_ERRORS = frozenset(
    {
        "mapper_parsing_exception",
        "document_parsing_exception",
        "strict_dynamic_mapping_exception",
        "mapper_exception",
        "action_request_validation_exception",  # e.g. an id longer than 512 bytes
        "x_content_parse_exception",
        "json_parse_exception",
        "illegal_argument_exception",  # only with a document-level reason, below
    }
)
# `illegal_argument_exception` is document-level for mapping limits and conflicts, but
# also answers "no write index is defined for alias", which is the index's problem.
_DOCUMENT_REASON = re.compile(
    r"limit of (total fields|mapping depth)|nested (documents|objects)|mapper \[|"
    r"cannot be changed from type|field name|immense term|failed to parse|"
    r"can't merge|is defined as",
    re.IGNORECASE,
)
# Elasticsearch pushing back as a whole: wait and send the same items again.
PUSHBACK_ERRORS = frozenset({"es_rejected_execution_exception", "circuit_breaking_exception"})
INDEX_MISSING_ERRORS = frozenset({"index_not_found_exception"})


def classify_item(status: int, error: Mapping[str, Any] | None) -> ItemOutcome:
    """One bulk item's status and error → what the indexer does with its event."""
    if 200 <= status < 300:
        return APPLIED
    kind = str((error or {}).get("type", ""))
    reason = str((error or {}).get("reason", ""))
    text = f"{status} {kind}: {reason}" if kind else f"{status}"
    if status == 409 or kind == "version_conflict_engine_exception":
        return ItemOutcome(Outcome.ALREADY_APPLIED, text)
    if kind in DOCUMENT_ERRORS and (
        kind != "illegal_argument_exception" or _DOCUMENT_REASON.search(reason)
    ):
        return ItemOutcome(Outcome.POISON, f"Elasticsearch rejected the document: {text}")
    if kind in INDEX_MISSING_ERRORS or (status == 404 and not kind):
        return ItemOutcome(Outcome.INDEX_MISSING, text)
    if kind in PUSHBACK_ERRORS or (status == 429 and kind != "cluster_block_exception"):
        return ItemOutcome(Outcome.RETRY, text)
    return ItemOutcome(Outcome.PARK, text)


# --- rounds -----------------------------------------------------------------------------


def plan_round(pending: Sequence[Event]) -> list[Event]:
    """The events to send now: each document's newest pending version (the first of equals,
    as Elasticsearch would take the first and answer the second with 409)."""
    newest: dict[tuple[str, str], Event] = {}
    for event in pending:
        current = newest.get(event.document)
        if current is None or event.record.version > current.record.version:
            newest[event.document] = event
    return list(newest.values())


@dataclass
class RoundResult:
    """What one round's answers mean for every pending event."""

    acknowledged: list[tuple[Event, str]] = field(default_factory=list)  # INDEXED or STALE
    poison: list[Poison] = field(default_factory=list)
    pending: list[Event] = field(default_factory=list)  # to send again
    parked: dict[str, tuple[str, list[Event]]] = field(default_factory=dict)  # reason, events
    retry_error: str = ""  # set when Elasticsearch pushed back: wait before the next round
    missing_indices: set[str] = field(default_factory=set)  # collections to create again


def settle(
    pending: Sequence[Event], sent: Sequence[Event], outcomes: Sequence[ItemOutcome]
) -> RoundResult:
    """Apply one round's answers (`outcomes[i]` for `sent[i]`) to the pending events."""
    result = RoundResult()
    outcome_of = {id(event): outcome for event, outcome in zip(sent, outcomes, strict=True)}
    sent_for = {event.document: event for event in sent}
    for event in sent:
        outcome = outcome_of[id(event)]
        if outcome.outcome is Outcome.PARK and event.collection not in result.parked:
            result.parked[event.collection] = (outcome.error, [])
    for event in pending:
        newest = sent_for[event.document]
        answer = outcome_of[id(newest)]
        if answer.outcome is Outcome.APPLIED:
            result.acknowledged.append((event, INDEXED if event is newest else STALE))
        elif answer.outcome is Outcome.ALREADY_APPLIED:
            # The index holds this document at the newest version or a newer one.
            result.acknowledged.append((event, STALE))
        elif answer.outcome is Outcome.POISON and event is newest:
            result.poison.append(
                Poison(event.message, event.record, event.collection, answer.error)
            )
        elif event.collection in result.parked:
            result.parked[event.collection][1].append(event)
        else:
            # Sent again: the next candidate after a poison version, or the same one
            # after a push-back or once its index exists again.
            result.pending.append(event)
            if answer.outcome is Outcome.RETRY:
                result.retry_error = result.retry_error or answer.error
            elif answer.outcome is Outcome.INDEX_MISSING:
                result.missing_indices.add(event.collection)
    return result


# --- bulk requests ----------------------------------------------------------------------


def chunks(events: Sequence[Event], *, max_events: int, max_bytes: int) -> list[list[Event]]:
    """`events` in order, as bulk requests of at most `max_events` and `max_bytes` (an
    event larger than `max_bytes` alone goes in a request of its own)."""
    out: list[list[Event]] = []
    current: list[Event] = []
    size = 0
    for event in events:
        if current and (len(current) >= max_events or size + len(event.body) > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(event)
        size += len(event.body)
    if current:
        out.append(current)
    return out


def halves(events: Sequence[Event]) -> tuple[list[Event], list[Event]]:
    """A request Elasticsearch refused as too large (413), split to be sent again."""
    middle = len(events) // 2
    return list(events[:middle]), list(events[middle:])
