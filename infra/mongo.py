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


OUTBOX_TTL_INDEX = "outbox_ttl"
OUTBOX_DOCUMENT_INDEX = "outbox_document_version"


async def ensure_outbox_indexes(client: MongoClient, settings: MongoSettings) -> None:
    """The outbox's indexes, made by whichever service starts first; idempotent.

    TTL on `time` (retention, `OUTBOX_MONGO_OUTBOX_TTL_DAYS`, changed in place when the
    setting changes) and `(collection, document_id, version)` for replays and reconcile.
    It looks before it creates: creating an index that already exists is a no-op on
    MongoDB, but SecantusDB blocks it behind any open transaction on the collection.
    """
    outbox = client[settings.database][settings.outbox_collection]
    ttl_seconds = int(settings.outbox_ttl_days * 86400)
    existing = {tuple(spec["key"].items()): spec async for spec in await outbox.list_indexes()}
    ttl = existing.get((("time", 1),))
    if ttl is None:
        await outbox.create_index(
            [("time", ASCENDING)], name=OUTBOX_TTL_INDEX, expireAfterSeconds=ttl_seconds
        )
    elif ttl.get("expireAfterSeconds") != ttl_seconds:
        await client[settings.database].command(
            {
                "collMod": settings.outbox_collection,
                "index": {"keyPattern": {"time": 1}, "expireAfterSeconds": ttl_seconds},
            }
        )
    document_keys = (("collection", 1), ("document_id", 1), ("version", 1))
    if document_keys not in existing:
        await outbox.create_index(
            [(key, ASCENDING) for key, _ in document_keys], name=OUTBOX_DOCUMENT_INDEX
        )
