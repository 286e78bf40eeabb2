"""`MongoLoginThrottle`: failed logins per username, shared by every auth replica.

One document per username that failed recently, keyed by a digest of the username (what
people type there is sometimes a password, so it is never stored as typed):
`{_id, failures, next_at, expires_at}`. `next_at` is when the next attempt may run
(`failure_delay_s`); a TTL index on `expires_at` forgets a name an hour after its last
failure, and a successful login forgets it at once.

An attempt past the free failures *claims* the slot atomically (moves `next_at` forward
before hashing), so parallel guesses for one name get one try per delay, not one each.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import PyMongoError

from auth_grpc.accounts import failure_delay_s
from infra.mongo import MongoClient, map_mongo_error
from infra.naming import LOGIN_FAILURES_COLLECTION
from infra.settings import MongoSettings

FORGET_AFTER = timedelta(hours=1)


def username_digest(username: str) -> str:
    """A stable, non-reversible name for a username in logs and throttle records."""
    return hashlib.sha256(username.encode(errors="surrogatepass")).hexdigest()[:24]


class MongoLoginThrottle:
    """A `LoginThrottle` over the `login_failures` collection."""

    def __init__(
        self,
        client: MongoClient,
        settings: MongoSettings,
        *,
        free_failures: int,
        max_delay_s: float,
    ) -> None:
        self._failures = client[settings.database][LOGIN_FAILURES_COLLECTION]
        self._free = free_failures
        self._max_delay_s = max_delay_s

    async def ensure_indexes(self) -> None:
        """The TTL index; looks before it creates (SecantusDB blocks behind transactions)."""
        try:
            names = {spec["name"] async for spec in await self._failures.list_indexes()}
            if "expires_at_ttl" not in names:
                await self._failures.create_index(
                    [("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl"
                )
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def admit(self, username: str) -> float | None:
        key = username_digest(username)
        now = datetime.now(UTC)
        try:
            record = await self._failures.find_one({"_id": key})
            if record is None or int(record["failures"]) < self._free:
                return None
            # Claim this attempt: nobody else gets one before the current delay has passed.
            delay = failure_delay_s(int(record["failures"]), self._free, self._max_delay_s)
            claimed = await self._failures.find_one_and_update(
                {"_id": key, "next_at": {"$lte": now}},
                {"$set": {"next_at": now + timedelta(seconds=delay)}},
            )
            if claimed is not None:
                return None
            current = await self._failures.find_one({"_id": key})
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        if current is None:
            return None
        return max(0.001, (_aware(current["next_at"]) - now).total_seconds())

    async def failed(self, username: str) -> None:
        key = username_digest(username)
        now = datetime.now(UTC)
        try:
            record: dict[str, Any] | None = await self._failures.find_one_and_update(
                {"_id": key},
                {"$inc": {"failures": 1}, "$setOnInsert": {"next_at": now}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            assert record is not None
            delay = failure_delay_s(int(record["failures"]), self._free, self._max_delay_s)
            next_at = now + timedelta(seconds=delay)
            await self._failures.update_one(
                {"_id": key},
                {"$set": {"next_at": next_at, "expires_at": next_at + FORGET_AFTER}},
            )
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def succeeded(self, username: str) -> None:
        try:
            await self._failures.delete_one({"_id": username_digest(username)})
        except PyMongoError as e:
            raise map_mongo_error(e) from e


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
