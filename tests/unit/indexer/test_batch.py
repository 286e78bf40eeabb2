"""The batch rules without servers: decode, classification by error type, rounds, chunks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.batch import (
    INDEXED,
    STALE,
    Event,
    ItemOutcome,
    Outcome,
    Poison,
    chunks,
    classify_item,
    decode,
    halves,
    plan_round,
    settle,
)
from indexer.consumer import ConsumedMessage
from infra.envelope import EventType, OutboxRecord
from infra.index_layout import source_for
from infra.index_limits import IndexLimits
from tests.fixtures.indexer import BASE_TIME, event_for, make_record, message_for


def ev(doc: str, version: int, collection: str = "books", offset: int = 0) -> Event:
    return event_for(make_record(collection, doc, version), offset)


PREFIX = "u.event."


# --- decode -------------------------------------------------------------------------------


def test_decode_separates_indexable_events_from_poison() -> None:
    good = make_record("books", "g", 1)
    over = make_record("books", "o", 1, payload={f"f{i}": i for i in range(994)})
    elsewhere = make_record("authors", "x", 1)  # on the books topic
    messages = [
        message_for(good, 0),
        ConsumedMessage(PREFIX + "books", 0, 1, b"k", b"{}", []),  # no headers
        message_for(over, 2),
        ConsumedMessage(
            PREFIX + "books", 0, 3, b"x", elsewhere.kafka_value(), elsewhere.kafka_headers()
        ),
    ]
    events, poison = decode(
        messages,
        topic_prefix=PREFIX,
        alias_for=lambda c: f"a-{c}",
        limits_for=lambda _c: IndexLimits(),
        indexed_at=BASE_TIME,
    )
    assert [e.record.document_id for e in events] == ["g"]
    assert events[0].action.alias == "a-books"
    assert events[0].body == events[0].action.ndjson()
    assert [(p.message.offset, p.collection) for p in poison] == [
        (1, "books"),
        (2, "books"),
        (3, "authors"),
    ]
    assert "missing header" in poison[0].error
    assert "1000" in poison[1].error
    assert "topic is for" in poison[2].error


# --- classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "reason", "outcome"),
    [
        (201, None, "", Outcome.APPLIED),
        (409, "version_conflict_engine_exception", "", Outcome.ALREADY_APPLIED),
        (400, "mapper_parsing_exception", "", Outcome.POISON),
        (400, "document_parsing_exception", "failed to parse field", Outcome.POISON),
        (400, "strict_dynamic_mapping_exception", "", Outcome.POISON),
        (
            400,
            "illegal_argument_exception",
            "Limit of total fields [1000] has been exceeded",
            Outcome.POISON,
        ),
        (
            400,
            "illegal_argument_exception",
            "Limit of mapping depth [20] has been exceeded",
            Outcome.POISON,
        ),
        (
            400,
            "illegal_argument_exception",
            "mapper [price] cannot be changed from type [long] to [text]",
            Outcome.POISON,
        ),
        (400, "action_request_validation_exception", "id is too long", Outcome.POISON),
        # Routine maintenance and index-level trouble park the collection, never the DLQ.
        (
            403,
            "cluster_block_exception",
            "index [x] blocked by: [FORBIDDEN/8/index write (api)]",
            Outcome.PARK,
        ),
        (429, "cluster_block_exception", "read-only-allow-delete block", Outcome.PARK),
        (400, "index_closed_exception", "closed", Outcome.PARK),
        (403, "security_exception", "action unauthorized", Outcome.PARK),
        (
            400,
            "illegal_argument_exception",
            "no write index is defined for alias [a]",
            Outcome.PARK,
        ),
        (503, "unavailable_shards_exception", "primary shard is not active", Outcome.PARK),
        (400, "some_new_exception", "", Outcome.PARK),
        (404, "index_not_found_exception", "no such index", Outcome.INDEX_MISSING),
        (404, None, "", Outcome.INDEX_MISSING),
        (429, "es_rejected_execution_exception", "queue full", Outcome.RETRY),
        (429, "circuit_breaking_exception", "data too large", Outcome.RETRY),
        (429, None, "", Outcome.RETRY),
    ],
)
def test_bulk_items_are_classified_by_elasticsearchs_error_type(
    status: int, kind: str | None, reason: str, outcome: Outcome
) -> None:
    error = None if kind is None else {"type": kind, "reason": reason}
    result = classify_item(status, error)
    assert result.outcome is outcome
    if kind is not None and outcome is not Outcome.APPLIED:
        assert kind in result.error


# --- rounds -------------------------------------------------------------------------------


def test_the_newest_version_of_each_document_is_sent_first_of_equals() -> None:
    batch = [ev("a", 1), ev("a", 3), ev("b", 2), ev("a", 3, offset=9), ev("a", 2)]
    sent = plan_round(batch)
    assert [(e.record.document_id, e.record.version, e.message.offset) for e in sent] == [
        ("a", 3, 0),
        ("b", 2, 0),
    ]


def test_when_the_newest_is_poison_the_next_newest_is_sent_and_then_applied() -> None:
    """[v1, v2, v3 poison]: v3 to the DLQ, v2 indexed, v1 stale (delivery I1)."""
    v1, v2, v3 = ev("a", 1), ev("a", 2), ev("a", 3)
    first = settle([v1, v2, v3], [v3], [ItemOutcome(Outcome.POISON, "mapping")])
    assert [p.record.version for p in first.poison if p.record] == [3]
    assert first.pending == [v1, v2]
    assert first.acknowledged == []
    second = settle(first.pending, plan_round(first.pending), [ItemOutcome(Outcome.APPLIED)])
    assert second.acknowledged == [(v1, STALE), (v2, INDEXED)]
    assert second.pending == []


def test_superseded_versions_wait_while_the_newest_is_retried() -> None:
    """An older version is acknowledged only with a newer one applied (or itself)."""
    v1, v2 = ev("a", 1), ev("a", 2)
    result = settle([v1, v2], [v2], [ItemOutcome(Outcome.RETRY, "429 es_rejected")])
    assert result.acknowledged == []
    assert result.pending == [v1, v2]
    assert "429" in result.retry_error
    missing = settle([v1, v2], [v2], [ItemOutcome(Outcome.INDEX_MISSING, "404")])
    assert missing.pending == [v1, v2]
    assert missing.missing_indices == {"books"}


def test_a_parked_collection_takes_all_its_waiting_events_and_no_others() -> None:
    a1, a2 = ev("a", 1), ev("a", 2)
    b1 = ev("b", 1)
    f1, f2 = ev("f", 1, "films"), ev("g", 1, "films")
    pending = [a1, a2, b1, f1, f2]
    sent = plan_round(pending)
    answers = {
        ("books", "a"): ItemOutcome(Outcome.APPLIED),
        ("books", "b"): ItemOutcome(Outcome.POISON, "mapping"),
        ("films", "f"): ItemOutcome(Outcome.PARK, "403 cluster_block_exception"),
        ("films", "g"): ItemOutcome(Outcome.APPLIED),
    }
    result = settle(pending, sent, [answers[e.document] for e in sent])
    assert result.acknowledged == [(a1, STALE), (a2, INDEXED), (f2, INDEXED)]
    assert [p.message for p in result.poison] == [b1.message]
    assert result.parked == {"films": ("403 cluster_block_exception", [f1])}
    assert result.pending == []


@dataclass
class ExternalVersionIndex:
    """Elasticsearch's `version_type=external` for one index, in memory, plus a set of
    versions whose documents it refuses (a mapping conflict)."""

    refused: set[tuple[str, int]]
    docs: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    def answer(self, sent: list[Event]) -> list[ItemOutcome]:
        outcomes: list[ItemOutcome] = []
        for event in sent:
            doc, version = event.record.document_id, event.record.version
            current = self.docs.get(doc)
            if (doc, version) in self.refused:
                outcomes.append(ItemOutcome(Outcome.POISON, "document_parsing_exception"))
            elif current is not None and current[0] >= version:
                outcomes.append(ItemOutcome(Outcome.ALREADY_APPLIED, "409"))
            else:
                self.docs[doc] = (version, event.action.source)
                outcomes.append(ItemOutcome(Outcome.APPLIED))
        return outcomes


def index_batch(
    index: ExternalVersionIndex, batch: list[Event]
) -> tuple[list[Event], list[Poison]]:
    """Rounds until nothing is pending, as the service runs them: (acknowledged, poison)."""
    pending = list(batch)
    acknowledged: list[Event] = []
    poison: list[Poison] = []
    rounds = 0
    while pending:
        rounds += 1
        assert rounds <= len(batch), "a round made no progress"
        sent = plan_round(pending)
        result = settle(pending, sent, index.answer(sent))
        acknowledged += [e for e, _ in result.acknowledged]
        poison += result.poison
        assert not result.parked
        pending = result.pending
    return acknowledged, poison


@st.composite
def deliveries(
    draw: st.DrawFn,
) -> tuple[list[OutboxRecord], set[tuple[str, int]], list[list[Event]]]:
    """A history (upserts and deletes; a delete is a version of its own, a re-create
    continues the count), some versions poison, delivered in any order with duplicates,
    split into arbitrary batches."""
    history: list[OutboxRecord] = []
    for d in range(draw(st.integers(1, 4))):
        kinds = draw(st.lists(st.booleans(), min_size=1, max_size=6))
        for version, is_delete in enumerate(kinds, start=1):
            event_type = EventType.DELETED if is_delete else None
            history.append(make_record("books", f"d{d}", version, event_type))
    refused = {
        (r.document_id, r.version)
        for r in history
        if r.type is not EventType.DELETED and draw(st.booleans()) and draw(st.booleans())
    }
    extra = draw(st.lists(st.sampled_from(history), max_size=len(history) * 2))
    delivered = draw(st.permutations(history + extra))
    events = [event_for(r, offset) for offset, r in enumerate(delivered)]
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=5)))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    return history, refused, batches


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_delivery_ends_at_each_documents_newest_indexable_version_each_event_resolved_once(
    case: tuple[list[OutboxRecord], set[tuple[str, int]], list[list[Event]]],
) -> None:
    """Out of order, duplicated, batched, some versions poison: every delivered event is
    resolved exactly once (acknowledged or dead-lettered), only refused versions are
    dead-lettered, each document ends at its newest version the index accepts (never an
    older one), and a stale event never resurrects a deleted document."""
    history, refused, batches = case
    index = ExternalVersionIndex(refused)
    resolved: Counter[int] = Counter()
    deleted_at: dict[str, int] = {}
    for batch in batches:
        before = dict(index.docs)
        acknowledged, poison = index_batch(index, batch)
        resolved.update(id(e.message) for e in acknowledged)
        resolved.update(id(p.message) for p in poison)
        for p in poison:
            assert p.record is not None
            assert (p.record.document_id, p.record.version) in refused
        for doc, (version, source) in index.docs.items():
            assert version >= before.get(doc, (0, {}))[0], "a version moved backwards"
            if doc in deleted_at and version < deleted_at[doc]:
                raise AssertionError("a stale event changed a deleted document")
            if source["deleted"]:
                deleted_at[doc] = max(deleted_at.get(doc, 0), version)
    delivered = [e for batch in batches for e in batch]
    assert resolved == Counter(id(e.message) for e in delivered), "an event lost or doubled"
    newest: dict[str, OutboxRecord] = {}
    for record in history:
        if (record.document_id, record.version) in refused:
            continue
        if record.document_id not in newest or record.version > newest[record.document_id].version:
            newest[record.document_id] = record
    assert {d: v for d, (v, _) in index.docs.items()} == {d: r.version for d, r in newest.items()}
    for document_id, record in newest.items():
        assert index.docs[document_id][1] == source_for(record, indexed_at=BASE_TIME)


# --- bulk requests ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 5000), max_size=40),
    st.integers(1, 10),
    st.integers(1, 20_000),
)
def test_chunks_keep_order_and_respect_both_caps(
    sizes: list[int], max_events: int, max_bytes: int
) -> None:
    """Every event once, in order; no request over either cap unless one event alone is."""
    events = [ev(f"d{i}", 1, offset=i) for i in range(len(sizes))]
    events = [
        Event(e.message, e.record, e.action, b"x" * size)
        for e, size in zip(events, sizes, strict=True)
    ]
    requests = chunks(events, max_events=max_events, max_bytes=max_bytes)
    assert [e for r in requests for e in r] == events
    for request in requests:
        assert 1 <= len(request) <= max_events
        assert len(request) == 1 or sum(len(e.body) for e in request) <= max_bytes
    first, second = halves(events)
    assert first + second == events
    assert abs(len(first) - len(second)) <= 1
