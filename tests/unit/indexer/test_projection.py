"""The projection rules: event → external-versioned index action, tombstones for deletes."""

from __future__ import annotations

import orjson
import pytest

from indexer.projection import ProjectionError, action_for, check_indexable
from infra.envelope import EventType, OutboxRecord
from infra.index_layout import source_for
from infra.index_limits import IndexLimits
from tests.fixtures.indexer import BASE_TIME, make_record

ALIAS = "outbox-books"


def test_a_delete_becomes_a_tombstone_at_the_delete_version() -> None:
    """A delete is indexed, not deleted: the tombstone keeps the version that blocks
    stale events."""
    record = make_record("books", "b1", 3, EventType.DELETED)
    action = action_for(record, alias=ALIAS)
    assert action.deleted
    assert action.bulk_header() == {
        "index": {
            "_index": ALIAS,
            "_id": "b1",
            "version": 3,
            "version_type": "external",
            "require_alias": True,
        }
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
        check_indexable(record, topic_collection=topic_collection, limits=IndexLimits())


def test_a_document_past_elasticsearchs_limits_is_poison_only_when_limits_are_checked() -> None:
    """The indexer checks the limits (the stand-in would index such a document)."""
    record = make_record("books", "b1", 1, payload={"": 1})
    check_indexable(record)
    with pytest.raises(ProjectionError, match="empty"):
        check_indexable(record, limits=IndexLimits())


def test_bulk_lines_are_ndjson_with_external_versions_and_the_alias_required() -> None:
    """Each action is two newline-terminated lines; reindex (no alias yet) can drop the
    `require_alias` flag."""
    action = action_for(make_record("books", "a", 1), alias=ALIAS)
    header, source, end = action.ndjson().split(b"\n")
    assert end == b""
    assert orjson.loads(header)["index"]["require_alias"] is True
    assert orjson.loads(source)["document"] == {"title": "a v1", "n": 1}
    plain = orjson.loads(action.ndjson(require_alias=False).split(b"\n")[0])
    assert "require_alias" not in plain["index"]
