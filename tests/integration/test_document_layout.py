"""The stored-document layout: the live query and the tombstone rule say the same thing."""

from __future__ import annotations

from datetime import UTC, datetime

from infra.document_layout import LIVE_QUERY, is_tombstone, stored_document
from infra.mongo import mongo_client
from infra.settings import Settings


async def test_the_live_query_selects_exactly_the_documents_that_are_not_tombstones(
    settings: Settings,
) -> None:
    """`outbox status` counts with the query, reconcile and the API judge with the rule."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    shapes = [
        stored_document("live", 1, {"a": 1}, now),
        stored_document("deleted", 2, None, now),
        {"_id": "flag-only", "version": 3, "document": {"a": 1}, "deleted": True},
        {"_id": "null-document", "version": 1, "document": None, "deleted": False},
        {"_id": "no-flag", "version": 1, "document": {"a": 1}},
        {"_id": "no-document", "version": 1, "deleted": False},
    ]
    client = mongo_client(settings.mongo, app_name="test")
    try:
        docs = client[settings.mongo.database]["layout"]
        await docs.insert_many(shapes)
        by_query = {d["_id"] async for d in docs.find(LIVE_QUERY)}
        by_rule = {d["_id"] for d in shapes if not is_tombstone(d)}
        assert by_query == by_rule == {"live", "no-flag"}
    finally:
        await client.close()
