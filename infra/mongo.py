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
        settings.uri,
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
            f"MongoDB at {redact_uri(settings.uri)} is unreachable: {e}"
        ) from e


def redact_uri(uri: str) -> str:
    """The URI without its password, fit for logs and error messages."""
    scheme, sep, rest = uri.partition("://")
    credentials, at, hosts = rest.rpartition("@")
    if not at:
        return uri
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hosts}"


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


async def _outbox_indexes(
    client: MongoClient, settings: MongoSettings
) -> dict[tuple[Any, ...], Any]:
    outbox = client[settings.database][settings.outbox_collection]
    return {tuple(spec["key"].items()): spec async for spec in await outbox.list_indexes()}


async def ensure_outbox_indexes(client: MongoClient, settings: MongoSettings) -> None:
    """The outbox index every writer needs, made by whichever service starts first.

    `(collection, document_id, version)`: replays, reconcile and the relay's recovery.
    Retention (the TTL index on `time`) is the relay's alone: see `outbox_ttl_seconds` and
    `set_outbox_ttl`, which the relay calls only when no unpublished record is at risk.
    It looks before it creates: creating an index that already exists is a no-op on
    MongoDB, but SecantusDB blocks it behind any open transaction on the collection.
    """
    document_keys = (("collection", 1), ("document_id", 1), ("version", 1))
    if document_keys not in await _outbox_indexes(client, settings):
        outbox = client[settings.database][settings.outbox_collection]
        await outbox.create_index(
            [(key, ASCENDING) for key, _ in document_keys], name=OUTBOX_DOCUMENT_INDEX
        )


async def outbox_ttl_seconds(client: MongoClient, settings: MongoSettings) -> int | None:
    """The outbox's current retention in seconds; None while it has no TTL index."""
    ttl = (await _outbox_indexes(client, settings)).get((("time", 1),))
    if ttl is None:
        return None
    seconds = ttl.get("expireAfterSeconds")
    return None if seconds is None else int(seconds)


async def set_outbox_ttl(client: MongoClient, settings: MongoSettings, seconds: int) -> None:
    """Create the TTL index on `time` with `seconds`, or change it in place."""
    outbox = client[settings.database][settings.outbox_collection]
    if (("time", 1),) not in await _outbox_indexes(client, settings):
        await outbox.create_index(
            [("time", ASCENDING)], name=OUTBOX_TTL_INDEX, expireAfterSeconds=seconds
        )
        return
    await client[settings.database].command(
        {
            "collMod": settings.outbox_collection,
            "index": {"keyPattern": {"time": 1}, "expireAfterSeconds": seconds},
        }
    )
