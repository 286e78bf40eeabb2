"""The projection rules: event → external-versioned index action, tombstones for deletes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.projection import (
    IndexAction,
    ProjectionError,
    action_for,
    check_indexable,
    latest_per_document,
    supersedes,
)
from infra.envelope import EventType, OutboxRecord
from infra.index_layout import source_for
from tests.fixtures.indexer import BASE_TIME, make_record

ALIAS = "outbox-books"


@dataclass
class StoredDoc:
    version: int
    source: dict[str, Any]


class ExternalVersionIndex:
    """Elasticsearch's `version_type=external` semantics for one index, in memory.

    An index op applies only if its version is strictly greater than the stored one. A
    real delete forgets the version (as Elasticsearch does after `index.gc_deletes`), so
    a projection that emitted deletes would fail the properties below.
    """

    def __init__(self) -> None:
        self.docs: dict[str, StoredDoc] = {}

    def apply(self, action: IndexAction) -> bool:
        current = self.docs.get(action.document_id)
        if not supersedes(action.version, current.version if current else None):
            return False  # 409: already applied
        self.docs[action.document_id] = StoredDoc(action.version, action.source)
        return True


@st.composite
def histories(draw: st.DrawFn) -> list[OutboxRecord]:
    """Per document, versions 1..n where each write is an upsert or a delete.

    As in MongoDB, a delete is a version of its own and a re-create continues the count.
    """
    records: list[OutboxRecord] = []
    for d in range(draw(st.integers(1, 4))):
        kinds = draw(st.lists(st.booleans(), min_size=1, max_size=6))
        for version, is_delete in enumerate(kinds, start=1):
            event_type = EventType.DELETED if is_delete else None
            records.append(make_record("books", f"d{d}", version, event_type))
    return records


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[OutboxRecord], list[list[OutboxRecord]]]:
    """A history, delivered in any order, with duplicates, split into arbitrary batches."""
    history = draw(histories())
    extra = draw(st.lists(st.sampled_from(history), max_size=len(history) * 2))
    delivered = draw(st.permutations(history + extra))
    cuts = sorted(draw(st.lists(st.integers(0, len(delivered)), max_size=5)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    return history, batches


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_delivery_order_converges_to_each_documents_highest_version(
    case: tuple[list[OutboxRecord], list[list[OutboxRecord]]],
) -> None:
    """Out of order, duplicated and batched: each document ends in its newest state,
    and once a delete at version v is applied no event with version < v changes anything."""
    history, batches = case
    index = ExternalVersionIndex()
    deleted_at: dict[str, int] = {}
    for batch in batches:
        actions = [action_for(r, alias=ALIAS) for r in batch]
        for action in latest_per_document(actions).values():
            before = index.docs.get(action.document_id)
            applied = index.apply(action)
            if action.document_id in deleted_at and action.version < deleted_at[action.document_id]:
                assert not applied, "a stale event resurrected or changed a deleted document"
            if before is not None:
                assert index.docs[action.document_id].version >= before.version
            if applied and action.deleted:
                deleted_at[action.document_id] = max(
                    deleted_at.get(action.document_id, 0), action.version
                )
    newest: dict[str, OutboxRecord] = {}
    for record in history:
        if record.document_id not in newest or record.version > newest[record.document_id].version:
            newest[record.document_id] = record
    assert {d: s.version for d, s in index.docs.items()} == {
        d: r.version for d, r in newest.items()
    }
    for document_id, record in newest.items():
        assert index.docs[document_id].source == source_for(record)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=30))
def test_latest_per_document_keeps_the_highest_version_and_first_of_equals(
    versions: list[int],
) -> None:
    """Within a batch only the newest action per document is sent; equal versions keep the first."""
    actions = [action_for(make_record("books", "same", v), alias=ALIAS) for v in versions]
    (kept,) = latest_per_document(actions).values()
    assert kept.version == max(versions)
    assert kept is actions[versions.index(max(versions))]


def test_a_delete_becomes_a_tombstone_at_the_delete_version() -> None:
    """A delete is indexed, not deleted: the tombstone keeps the version that blocks
    stale events."""
    record = make_record("books", "b1", 3, EventType.DELETED)
    action = action_for(record, alias=ALIAS)
    assert action.deleted
    assert action.bulk_header() == {
        "index": {"_index": ALIAS, "_id": "b1", "version": 3, "version_type": "external"}
    }
    assert action.source["document"] is None
    assert action.source["deleted"] is True
    assert action.source["version"] == 3


def test_live_source_carries_document_version_and_event_metadata() -> None:
    """The `_source` layout the operator tools rebuild: id, version, deleted, document, event."""
    record = make_record("books", "b1", 2, payload={"title": "t"})
    source = source_for(record, indexed_at=BASE_TIME)
    assert source == {
        "id": "b1",
        "version": 2,
        "deleted": False,
        "document": {"title": "t"},
        "event_id": record.event_id,
        "committed_at": "2026-01-01T00:00:02.000Z",
        "indexed_at": "2026-01-01T00:00:00.000Z",
    }
    assert "indexed_at" not in source_for(record)


@pytest.mark.parametrize(
    ("record", "topic_collection", "error"),
    [
        (make_record("Books", "b1", 1), None, "not indexable"),
        (make_record("books", "b1", 1), "authors", "topic is for"),
        (make_record("books", "x" * 600, 1), None, "longer than"),
    ],
)
def test_unindexable_events_are_poison(
    record: OutboxRecord, topic_collection: str | None, error: str
) -> None:
    """Events no retry can index raise ProjectionError (the service dead-letters them)."""
    with pytest.raises(ProjectionError, match=error):
        check_indexable(record, topic_collection=topic_collection)
