"""A cap on the number of document collections: each one costs a Kafka topic and an index.

Checked on the writes that can create a collection (POST and PUT); a write to an existing
collection never waits for it. The cap is soft by a few: two first writes to two new
collections racing at the cap can both pass, which a cap meant to stop a runaway writer
(not to count exactly) can afford.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.write_rules import WriteRejectedError
from infra.naming import is_document_collection
from infra.settings import MongoSettings

# A refused write lists the collections again at most this often.
RELIST_AFTER_S = 1.0


class CollectionLimitError(WriteRejectedError):
    """The write would create a collection beyond `OUTBOX_API_MAX_COLLECTIONS` (HTTP 409)."""


class CollectionLimit:
    """Knows which document collections exist; refuses a new one once there are `maximum`."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], settings: MongoSettings, maximum: int
    ) -> None:
        self._db = db
        self._settings = settings
        self._maximum = maximum
        self._known: frozenset[str] = frozenset()
        self._listed_at = float("-inf")
        self._lock = asyncio.Lock()

    async def check(self, collection: str) -> None:
        """Return if `collection` exists or may be created; else `CollectionLimitError`."""
        if collection in self._known:
            return
        async with self._lock:
            if collection not in self._known and not self._recently_full():
                await self._list()
            if collection in self._known or len(self._known) < self._maximum:
                return
        raise CollectionLimitError(
            f"collection {collection!r} would be one more than the limit of {self._maximum} "
            "collections (OUTBOX_API_MAX_COLLECTIONS); write to an existing one"
        )

    def _recently_full(self) -> bool:
        """At the cap when last listed, a moment ago: refuse without listing again."""
        return (
            len(self._known) >= self._maximum
            and time.monotonic() - self._listed_at < RELIST_AFTER_S
        )

    async def _list(self) -> None:
        names = await self._db.list_collection_names()
        self._known = frozenset(n for n in names if is_document_collection(n, self._settings))
        self._listed_at = time.monotonic()
