"""MongoDB client factory and driver-error mapping."""

from __future__ import annotations

from typing import Any, TypeAlias

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from infra.errors import FatalError, RetriableError, ServerUnreachableError
from infra.settings import MongoSettings

MongoClient: TypeAlias = AsyncMongoClient[dict[str, Any]]


def mongo_client(settings: MongoSettings, *, app_name: str) -> MongoClient:
    """An `AsyncMongoClient` (PyMongo's async API, Motor's successor); connects lazily."""
    return AsyncMongoClient(
        settings.uri.get_secret_value(),
        appname=app_name,
        tz_aware=True,
        serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
    )


async def ping(client: MongoClient, settings: MongoSettings) -> None:
    """Raise `ServerUnreachableError` naming the server when it does not answer."""
    try:
        await client.admin.command("ping")
    except PyMongoError as e:
        raise ServerUnreachableError(
            f"MongoDB at {settings.display_uri} is unreachable: {e}"
        ) from e


def map_mongo_error(e: PyMongoError) -> RetriableError | FatalError:
    """Retriable: connection loss and anything labelled transient; the rest is fatal."""
    if isinstance(e, ConnectionFailure) or e.has_error_label("TransientTransactionError"):
        return RetriableError(str(e))
    if e.has_error_label("RetryableWriteError") or e.has_error_label("ResumableChangeStreamError"):
        return RetriableError(str(e))
    if isinstance(e, OperationFailure) and e.code in {6, 7, 89, 91, 189, 262, 9001, 10107, 11600}:
        return RetriableError(str(e))  # host unreachable/not found, timeouts, shutdown, not primary
    return FatalError(str(e))


OUTBOX_TTL_INDEX = "outbox_ttl"  # the `time` index when the relay creates it with its TTL
OUTBOX_TIME_INDEX = "outbox_time"  # the `time` index when a writer creates it first
OUTBOX_DOCUMENT_INDEX = "outbox_document_version"


async def _outbox_indexes(
    client: MongoClient, settings: MongoSettings
) -> dict[tuple[Any, ...], Any]:
    outbox = client[settings.database][settings.outbox_collection]
    return {tuple(spec["key"].items()): spec async for spec in await outbox.list_indexes()}


async def ensure_outbox_indexes(client: MongoClient, settings: MongoSettings) -> None:
    """The outbox indexes every writer needs, made by whichever service starts first.

    `(collection, document_id, version)` for replays, reconcile and recovery, and a plain
    index on `time` for the relay's time ranges. Both must exist before the first write:
    SecantusDB's index build misses the records of transactions open while it runs (a
    time-range scan then never returns them). Retention — turning the `time` index into
    a TTL index, or changing its TTL — is the relay's alone (`set_outbox_ttl`), done only
    when no unpublished record is at risk. It looks before it creates: SecantusDB also
    blocks index creation behind open transactions on the collection.
    """
    outbox = client[settings.database][settings.outbox_collection]
    existing = await _outbox_indexes(client, settings)
    document_keys = (("collection", 1), ("document_id", 1), ("version", 1))
    if document_keys not in existing:
        await outbox.create_index(
            [(key, ASCENDING) for key, _ in document_keys], name=OUTBOX_DOCUMENT_INDEX
        )
    if (("time", 1),) not in existing:
        await outbox.create_index([("time", ASCENDING)], name=OUTBOX_TIME_INDEX)


async def outbox_ttl_seconds(client: MongoClient, settings: MongoSettings) -> int | None:
    """The outbox's current retention in seconds; None while records are kept forever."""
    ttl = (await _outbox_indexes(client, settings)).get((("time", 1),))
    if ttl is None:
        return None
    seconds = ttl.get("expireAfterSeconds")
    return None if seconds is None else int(seconds)


async def set_outbox_ttl(client: MongoClient, settings: MongoSettings, seconds: int) -> None:
    """Make the `time` index a TTL index of `seconds` (in place), creating it if missing."""
    outbox = client[settings.database][settings.outbox_collection]
    if (("time", 1),) not in await _outbox_indexes(client, settings):
        await outbox.create_index(
            [("time", ASCENDING)], name=OUTBOX_TTL_INDEX, expireAfterSeconds=seconds
        )
        return
    # Also turns a plain index into a TTL index (MongoDB 5.1 and later).
    await client[settings.database].command(
        {
            "collMod": settings.outbox_collection,
            "index": {"keyPattern": {"time": 1}, "expireAfterSeconds": seconds},
        }
    )
