"""The outbox's indexes: created once by whichever service starts first, TTL kept in step."""

from __future__ import annotations

from infra.mongo import ensure_outbox_indexes, mongo_client
from infra.settings import Settings


async def test_outbox_indexes_are_idempotent_and_follow_the_ttl_setting(
    settings: Settings,
) -> None:
    client = mongo_client(settings.mongo, app_name="test")
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    try:
        await ensure_outbox_indexes(client, settings.mongo)
        await ensure_outbox_indexes(client, settings.mongo)  # a second service starting
        specs = {spec["name"]: spec async for spec in await outbox.list_indexes()}
        assert specs["outbox_ttl"]["expireAfterSeconds"] == 7 * 86400
        assert "outbox_document_version" in specs
        assert len(specs) == 3  # plus _id_

        shorter = settings.mongo.model_copy(update={"outbox_ttl_days": 1})
        await ensure_outbox_indexes(client, shorter)
        specs = {spec["name"]: spec async for spec in await outbox.list_indexes()}
        assert specs["outbox_ttl"]["expireAfterSeconds"] == 86400
    finally:
        await client.close()
