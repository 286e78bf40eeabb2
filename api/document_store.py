"""MongoDB adapter: each write stores the document and its outbox record in one transaction.

`session.with_transaction` re-runs the whole callback on `TransientTransactionError`
(WriteConflict included) with backoff, within `OUTBOX_API_WRITE_TIMEOUT_S`; that is the
only retry here. A rejected write (If-Match, 404, 409) or a failure anywhere inside the
callback aborts the transaction, so it leaves neither a document change nor an outbox record.

**Time comes from MongoDB, not from this host.** The outbox record's `time` and the
document's `updated_at` are written with `$currentDate`, which the server fills in from its
own clock when it applies the write. The relay's history-loss recovery compares `time`
with MongoDB cluster times (the oplog's clock) to decide which records a window must
re-scan; a stamp from an API host whose clock runs behind would fall outside that window
and the record would be lost. `$currentDate` is an update operator, so no user data is
ever evaluated as an expression (an update pipeline with `$$NOW` would need `$literal`
around every document). Precision is the millisecond, as for any BSON date.

**An unknown commit outcome is looked up, not guessed.** When the commit's answer is lost
(a network error, `UnknownTransactionCommitResult` after the time limit), the outbox
record's event id, known from the callback, is read back with majority read concern: if it
is there the write committed and the caller gets its result; if not, `OutcomeUnknownError`
(never a "retry safely" answer: the commit may still land).

**Idempotency keys** live in their own collection, written in the same transaction as the
document: a repeat with the same key and body returns the first result, a repeat with
another body is refused, and concurrent repeats serialise on the key's unique `_id`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pymongo
import structlog
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from api.validation import check_indexable
from api.write_rules import (
    Command,
    IfMatch,
    StoredState,
    WritePlan,
    WriteRejectedError,
    plan_write,
)
from infra.document_layout import UPDATED_AT
from infra.envelope import OutboxRecord, new_event_id
from infra.errors import RetriableError
from infra.index_limits import IndexLimits
from infra.mongo import MongoClient
from infra.naming import IDEMPOTENCY_KEYS_COLLECTION
from infra.settings import MongoSettings

log = structlog.get_logger(__name__)

# MongoDB's WriteConflict: with this label `with_transaction` retries the whole transaction.
WRITE_CONFLICT = 112
# How long the read-back of an ambiguous commit may take.
OUTCOME_LOOKUP_TIMEOUT_S = 5.0
# The stored forms are built by the kernel's layout functions with a placeholder time;
# the server then sets the real one (`$currentDate`).
_PLACEHOLDER_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class OutcomeUnknownError(RetriableError):
    """The commit's outcome could not be learned; the write may or may not have happened."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"the outcome of write {event_id} is unknown")
        self.event_id = event_id


class IdempotencyKeyReusedError(WriteRejectedError):
    """An Idempotency-Key seen before with a different request (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A live document as a read returns it."""

    id: str
    version: int
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed write did (`replayed`: the stored result of an idempotent repeat)."""

    id: str
    version: int
    event_id: str
    type: str
    document: dict[str, Any] | None
    created: bool
    replayed: bool = False

    def to_mongo(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "event_id": self.event_id,
            "type": self.type,
            "document": self.document,
            "created": self.created,
        }

    @classmethod
    def from_mongo(cls, raw: dict[str, Any]) -> WriteResult:
        return cls(
            id=str(raw["id"]),
            version=int(raw["version"]),
            event_id=str(raw["event_id"]),
            type=str(raw["type"]),
            document=raw.get("document"),
            created=bool(raw["created"]),
            replayed=True,
        )


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's Idempotency-Key, scoped to its user and collection, and its request."""

    key_id: str
    request_digest: str

    @classmethod
    def of(
        cls, *, key: str, user_id: str, collection: str, request: dict[str, Any]
    ) -> IdempotencyKey:
        """Keys of different users (or collections) never meet; the request is hashed in
        canonical form (sorted keys), so whitespace and key order do not matter."""
        scope = orjson.dumps([user_id, collection, key])
        canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
        return cls(
            key_id=hashlib.sha256(scope).hexdigest(),
            request_digest=hashlib.sha256(canonical).hexdigest(),
        )


@dataclass(frozen=True, slots=True)
class WriteContext:
    """Handed to the `after_document_write` hook, inside the open transaction."""

    session: AsyncClientSession
    collection: str
    document_id: str
    plan: WritePlan


AfterDocumentWrite = Callable[[WriteContext], Awaitable[None]]


@dataclass
class _Attempt:
    """The current `with_transaction` attempt: its event id and result once the callback
    finished (from then on a failure is in the commit, whose outcome may be unknown)."""

    event_id: str | None = None
    result: WriteResult | None = field(default=None)


class MongoDocumentStore:
    """Documents in collection `<c>` of the configured database, events in the outbox."""

    def __init__(
        self,
        client: MongoClient,
        settings: MongoSettings,
        *,
        max_document_bytes: int | None = None,
        after_document_write: AfterDocumentWrite | None = None,
        index_limits: Callable[[str], IndexLimits] | None = None,
        write_timeout_s: float = 10.0,
        idempotency_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self._client = client
        self._db = client[settings.database]
        self._settings = settings
        self._outbox: AsyncCollection[dict[str, Any]] = self._db[settings.outbox_collection]
        self._keys: AsyncCollection[dict[str, Any]] = self._db[IDEMPOTENCY_KEYS_COLLECTION]
        self._max_document_bytes = max_document_bytes
        self._after_document_write = after_document_write
        self._index_limits = index_limits
        self._write_timeout_s = write_timeout_s
        self._idempotency_ttl = idempotency_ttl

    async def ensure_indexes(self) -> None:
        """The idempotency keys' TTL index; looks before it creates (SecantusDB blocks
        `createIndexes` behind any open transaction on the collection)."""
        names = {spec["name"] async for spec in await self._keys.list_indexes()}
        if "expires_at_ttl" not in names:
            await self._keys.create_index(
                [("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl"
            )

    async def get(self, collection: str, document_id: str) -> StoredDocument | None:
        """The live document, or None if it never existed or was deleted."""
        raw = await self._db[collection].find_one({"_id": document_id})
        state = StoredState.from_mongo(raw)
        if state is None or state.document is None:
            return None
        return StoredDocument(document_id, state.version, state.document)

    async def write(
        self,
        collection: str,
        document_id: str,
        command: Command,
        *,
        if_match: IfMatch | None = None,
        traceparent: str | None = None,
        auth_id: str | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> WriteResult:
        """Apply `command` and record its outbox event atomically.

        Raises `WriteRejectedError` (nothing written), `OutcomeUnknownError` (the commit's
        answer was lost and the read-back could not find the event), or a driver error.
        """
        documents: AsyncCollection[dict[str, Any]] = self._db[collection]
        attempt = _Attempt()

        async def in_transaction(session: AsyncClientSession) -> WriteResult:
            attempt.event_id, attempt.result = None, None
            if idempotency is not None:
                earlier = await self._keys.find_one({"_id": idempotency.key_id}, session=session)
                if earlier is not None:
                    if earlier["request_digest"] != idempotency.request_digest:
                        raise IdempotencyKeyReusedError(
                            "this Idempotency-Key was used before with a different request"
                        )
                    return WriteResult.from_mongo(earlier["result"])
            raw = await documents.find_one({"_id": document_id}, session=session)
            current = StoredState.from_mongo(raw)
            plan = plan_write(
                current, command, if_match=if_match, max_document_bytes=self._max_document_bytes
            )
            if self._index_limits is not None and plan.document is not None:
                check_indexable(plan.document, self._index_limits(collection))
            await self._store_document(documents, session, document_id, plan, current)
            if self._after_document_write is not None:
                await self._after_document_write(
                    WriteContext(session, collection, document_id, plan)
                )
            attempt.event_id = new_event_id()
            record: OutboxRecord = plan.outbox_record(
                event_id=attempt.event_id,
                collection=collection,
                document_id=document_id,
                time=_PLACEHOLDER_TIME,
                traceparent=traceparent,
                auth_id=auth_id,
            )
            await self._outbox.update_one(
                *_with_server_time(record.to_mongo(), "time"), upsert=True, session=session
            )
            result = WriteResult(
                id=document_id,
                version=plan.version,
                event_id=record.event_id,
                type=plan.type.value,
                document=plan.document,
                created=current is None or not current.live,
            )
            if idempotency is not None:
                await self._remember(session, idempotency, result, collection, document_id)
            attempt.result = result
            return result

        try:
            with pymongo.timeout(self._write_timeout_s):
                async with self._client.start_session() as session:
                    result: WriteResult = await session.with_transaction(
                        in_transaction,
                        read_concern=ReadConcern("snapshot"),
                        write_concern=WriteConcern("majority"),
                    )
        except PyMongoError as e:
            if attempt.result is None or e.has_error_label("TransientTransactionError"):
                raise  # failed before the commit, or the commit surely aborted: nothing written
            result = await self._committed(attempt.result, e)
        if result.replayed:
            log.info(
                "idempotent_write_replayed",
                collection=collection,
                document_id=result.id,
                event_id=result.event_id,
                auth_id=auth_id,
            )
            return result
        log.info(
            "document_written",
            collection=collection,
            document_id=document_id,
            version=result.version,
            event_id=result.event_id,
            type=result.type,
            auth_id=auth_id,
        )
        return result

    async def _store_document(
        self,
        documents: AsyncCollection[dict[str, Any]],
        session: AsyncClientSession,
        document_id: str,
        plan: WritePlan,
        current: StoredState | None,
    ) -> None:
        stored = plan.to_mongo(document_id, _PLACEHOLDER_TIME)
        if current is None:
            query, update = _with_server_time(stored, UPDATED_AT)
            try:
                inserted = await documents.update_one(query, update, upsert=True, session=session)
            except DuplicateKeyError as e:  # created concurrently after our snapshot
                raise _write_conflict(documents.name, document_id) from e
            if inserted.upserted_id is None:
                raise _write_conflict(documents.name, document_id)
            return
        # Guarded by the version read above: a concurrent writer makes this a conflict.
        fields = {k: v for k, v in stored.items() if k not in {"_id", UPDATED_AT}}
        replaced = await documents.update_one(
            {"_id": document_id, "version": current.version},
            {"$set": fields, "$currentDate": {UPDATED_AT: True}},
            session=session,
        )
        if replaced.matched_count != 1:
            raise _write_conflict(documents.name, document_id)

    async def _remember(
        self,
        session: AsyncClientSession,
        idempotency: IdempotencyKey,
        result: WriteResult,
        collection: str,
        document_id: str,
    ) -> None:
        try:
            await self._keys.insert_one(
                {
                    "_id": idempotency.key_id,
                    "request_digest": idempotency.request_digest,
                    "result": result.to_mongo(),
                    # Retention only: this host's clock is good enough for when to forget.
                    "expires_at": datetime.now(UTC) + self._idempotency_ttl,
                },
                session=session,
            )
        except DuplicateKeyError as e:  # a concurrent repeat committed first: re-run, replay it
            raise _write_conflict(collection, document_id) from e

    async def _committed(self, result: WriteResult, error: PyMongoError) -> WriteResult:
        """The result if the outbox holds the write's event (it committed); else
        `OutcomeUnknownError`."""
        log.warning("write_outcome_unknown", event_id=result.event_id, error=type(error).__name__)
        outbox = self._outbox.with_options(read_concern=ReadConcern("majority"))
        try:
            with pymongo.timeout(OUTCOME_LOOKUP_TIMEOUT_S):
                found = await outbox.find_one({"_id": result.event_id}, projection={"_id": 1})
        except PyMongoError as e:
            log.warning("write_outcome_lookup_failed", event_id=result.event_id, error=str(e))
            raise OutcomeUnknownError(result.event_id) from error
        if found is None:
            raise OutcomeUnknownError(result.event_id) from error
        log.info("write_outcome_resolved", event_id=result.event_id, committed=True)
        return result


def _with_server_time(
    stored: dict[str, Any], time_field: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An upsert that inserts `stored` with `time_field` set by the server's clock."""
    fields = {k: v for k, v in stored.items() if k not in {"_id", time_field}}
    return {"_id": stored["_id"]}, {"$setOnInsert": fields, "$currentDate": {time_field: True}}


def _write_conflict(collection: str, document_id: str) -> OperationFailure:
    """Shaped like the server's WriteConflict so `with_transaction` re-runs the transaction."""
    return OperationFailure(
        f"concurrent write to {collection}/{document_id}",
        code=WRITE_CONFLICT,
        details={"errorLabels": ["TransientTransactionError"], "codeName": "WriteConflict"},
    )
