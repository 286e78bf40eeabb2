"""The outbox indexes: the document index by any service, the TTL by the relay."""

from __future__ import annotations

from infra.mongo import ensure_outbox_indexes, mongo_client, outbox_ttl_seconds, set_outbox_ttl
from infra.settings import Settings


async def test_outbox_indexes_are_idempotent_and_the_ttl_is_set_only_when_asked(
    settings: Settings,
) -> None:
    client = mongo_client(settings.mongo, app_name="test")
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    try:
        await ensure_outbox_indexes(client, settings.mongo)
        await ensure_outbox_indexes(client, settings.mongo)  # a second service starting
        specs = {spec["name"]: spec async for spec in await outbox.list_indexes()}
        assert "outbox_document_version" in specs
        assert "outbox_time" in specs  # before the first write; no TTL: the relay's call
        assert len(specs) == 3  # plus _id_
        assert await outbox_ttl_seconds(client, settings.mongo) is None

        await set_outbox_ttl(client, settings.mongo, 7 * 86400)  # the plain index becomes TTL
        assert await outbox_ttl_seconds(client, settings.mongo) == 7 * 86400
        await set_outbox_ttl(client, settings.mongo, 86400)  # changed in place
        assert await outbox_ttl_seconds(client, settings.mongo) == 86400
    finally:
        await client.close()
