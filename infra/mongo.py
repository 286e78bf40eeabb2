"""MongoDB client factory and driver-error mapping."""

from __future__ import annotations

from typing import Any, TypeAlias

from pymongo import AsyncMongoClient
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
