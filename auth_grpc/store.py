"""`MongoUserStore`: users and the token deny-list in MongoDB.

- `users` (`settings.mongo.users_collection`): `_id` is a UUID string, unique index on
  `username`, the argon2id hash and the expanded role list.
- `revoked_tokens`: `_id` is the token's `jti`; a TTL index on `expires_at` deletes an
  entry once its token would have expired anyway, so the list never grows without bound.

Driver errors are mapped here into `RetriableError` / `FatalError` (the servicer turns
them into UNAVAILABLE / INTERNAL).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from auth_grpc.accounts import ROLE_ORDER, Role, User, UserExistsError
from infra.mongo import MongoClient, map_mongo_error
from infra.naming import REVOKED_TOKENS_COLLECTION
from infra.settings import MongoSettings


class MongoUserStore:
    """A `UserStore` over one MongoDB database."""

    def __init__(self, client: MongoClient, settings: MongoSettings) -> None:
        db: AsyncDatabase[dict[str, Any]] = client[settings.database]
        self._users = db[settings.users_collection]
        self._revoked = db[REVOKED_TOKENS_COLLECTION]

    async def ensure_indexes(self) -> None:
        """Create the unique username index and the deny-list TTL index (idempotent)."""
        try:
            await self._users.create_index(
                [("username", ASCENDING)], unique=True, name="username_unique"
            )
            await self._revoked.create_index(
                [("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl"
            )
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def create_user(
        self,
        username: str,
        password_hash: str,
        roles: list[Role],
        collections: tuple[str, ...] = (),
    ) -> User:
        """Insert a user; `UserExistsError` when the username is taken."""
        now = datetime.now(UTC)
        doc: dict[str, Any] = {
            "_id": str(uuid.uuid4()),
            "username": username,
            "password_hash": password_hash,
            "roles": list(roles),
            "collections": list(collections),
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self._users.insert_one(doc)
        except DuplicateKeyError as e:
            raise UserExistsError(f"user {username!r} already exists") from e
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        return _user_from_doc(doc)

    async def find_by_username(self, username: str) -> User | None:
        return await self._find_one({"username": username})

    async def find_by_id(self, user_id: str) -> User | None:
        return await self._find_one({"_id": user_id})

    async def update_password_hash(self, user_id: str, password_hash: str) -> None:
        try:
            await self._users.update_one(
                {"_id": user_id},
                {"$set": {"password_hash": password_hash, "updated_at": datetime.now(UTC)}},
            )
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def set_role(
        self, username: str, roles: list[Role], collections: tuple[str, ...]
    ) -> bool:
        """Give the user `roles` scoped to `collections` (empty: all); False if no such user."""
        return await self._update(
            username, {"roles": list(roles), "collections": list(collections)}
        )

    async def set_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or re-enable) the user; False if no such user."""
        return await self._update(username, {"disabled": disabled})

    async def delete_user(self, username: str) -> bool:
        """Delete the user (their tokens stop verifying); False if no such user."""
        try:
            deleted = await self._users.delete_one({"username": username})
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        return deleted.deleted_count == 1

    async def _update(self, username: str, fields: dict[str, Any]) -> bool:
        try:
            updated = await self._users.update_one(
                {"username": username}, {"$set": {**fields, "updated_at": datetime.now(UTC)}}
            )
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        return updated.matched_count == 1

    async def revoke(self, token_id: str, user_id: str, expires_at: datetime) -> None:
        """Deny `token_id` until `expires_at`; an upsert, so revoking twice is harmless."""
        try:
            await self._revoked.update_one(
                {"_id": token_id},
                {
                    "$setOnInsert": {
                        "user_id": user_id,
                        "expires_at": expires_at,
                        "revoked_at": datetime.now(UTC),
                    }
                },
                upsert=True,
            )
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def is_revoked(self, token_id: str) -> bool:
        try:
            found = await self._revoked.find_one({"_id": token_id}, projection={"_id": 1})
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        return found is not None

    async def _find_one(self, query: Mapping[str, Any]) -> User | None:
        try:
            doc = await self._users.find_one(query)
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        return None if doc is None else _user_from_doc(doc)


def _user_from_doc(doc: Mapping[str, Any]) -> User:
    roles = tuple(cast("Role", r) for r in doc.get("roles", []) if r in ROLE_ORDER)
    created_at = doc["created_at"]
    if created_at.tzinfo is None:  # a client built without tz_aware=True
        created_at = created_at.replace(tzinfo=UTC)
    return User(
        id=str(doc["_id"]),
        username=str(doc["username"]),
        password_hash=str(doc["password_hash"]),
        roles=roles,
        created_at=created_at,
        collections=tuple(str(c) for c in doc.get("collections") or ()),
        disabled=bool(doc.get("disabled", False)),
    )
