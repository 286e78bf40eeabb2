"""Bulk item statuses → what the indexer does; the NDJSON body."""

from __future__ import annotations

import orjson
import pytest

from indexer.projection import action_for
from indexer.sink import ItemResult, bulk_body, classify_item
from infra.envelope import EventType
from infra.tracing import trace_id_of
from tests.fixtures.indexer import make_record


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (200, ItemResult.APPLIED),
        (201, ItemResult.APPLIED),
        (409, ItemResult.ALREADY_APPLIED),
        (400, ItemResult.POISON),
        (413, ItemResult.POISON),
        (404, ItemResult.RETRY),
        (429, ItemResult.RETRY),
        (500, ItemResult.RETRY),
        (503, ItemResult.RETRY),
    ],
)
def test_bulk_item_status_classification(status: int, result: ItemResult) -> None:
    """409 means already applied; 429/5xx/404 are retried; any other 4xx is poison."""
    outcome = classify_item(status, {"type": "x_exception", "reason": "why"})
    assert outcome.result is result
    if result is ItemResult.POISON:
        assert "x_exception: why" in outcome.error


def test_bulk_body_is_ndjson_with_external_versions() -> None:
    actions = [
        action_for(make_record("books", "a", 1), alias="al"),
        action_for(make_record("books", "b", 2, EventType.DELETED), alias="al"),
    ]
    lines = bulk_body(actions).split(b"\n")
    assert lines[-1] == b""
    decoded = [orjson.loads(line) for line in lines[:-1]]
    assert decoded[0] == {
        "index": {"_index": "al", "_id": "a", "version": 1, "version_type": "external"}
    }
    assert decoded[1]["document"] == {"title": "a v1", "n": 1}
    assert decoded[3]["deleted"] is True


def test_trace_id_is_the_second_traceparent_field() -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    assert trace_id_of(f"00-{trace}-b7ad6b7169203331-01") == trace
    assert trace_id_of("garbage") is None
    assert trace_id_of(None) is None
