"""MongoDB adapter: each write stores the document and its outbox record in one transaction.

`session.with_transaction` re-runs the whole callback on `TransientTransactionError`
(WriteConflict included) with backoff, within its own time limit; that is the only retry
here. A rejected write (If-Match, 404, 409) or a failure anywhere inside the callback
aborts the transaction, so it leaves neither a document change nor an outbox record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from api.validation import check_indexable
from api.write_rules import Command, IfMatch, StoredState, WritePlan, plan_write
from infra.envelope import OutboxRecord, new_event_id, utc_now
from infra.index_limits import IndexLimits
from infra.mongo import MongoClient
from infra.settings import MongoSettings

log = structlog.get_logger(__name__)

# MongoDB's WriteConflict: with this label `with_transaction` retries the whole transaction.
WRITE_CONFLICT = 112


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A live document as a read returns it."""

    id: str
    version: int
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed write did."""

    id: str
    version: int
    event_id: str
    type: str
    document: dict[str, Any] | None
    created: bool


@dataclass(frozen=True, slots=True)
class WriteContext:
    """Handed to the `after_document_write` hook, inside the open transaction."""

    session: AsyncClientSession
    collection: str
    document_id: str
    plan: WritePlan


AfterDocumentWrite = Callable[[WriteContext], Awaitable[None]]


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
    ) -> None:
        self._client = client
        self._db = client[settings.database]
        self._settings = settings
        self._outbox: AsyncCollection[dict[str, Any]] = self._db[settings.outbox_collection]
        self._max_document_bytes = max_document_bytes
        self._after_document_write = after_document_write
        self._index_limits = index_limits

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
    ) -> WriteResult:
        """Apply `command` and record its outbox event atomically; raises `WriteRejectedError`."""
        documents: AsyncCollection[dict[str, Any]] = self._db[collection]

        async def in_transaction(session: AsyncClientSession) -> WriteResult:
            raw = await documents.find_one({"_id": document_id}, session=session)
            current = StoredState.from_mongo(raw)
            plan = plan_write(
                current, command, if_match=if_match, max_document_bytes=self._max_document_bytes
            )
            if self._index_limits is not None and plan.document is not None:
                check_indexable(plan.document, self._index_limits(collection))
            now = utc_now()
            stored = plan.to_mongo(document_id, now)
            if current is None:
                try:
                    await documents.insert_one(stored, session=session)
                except DuplicateKeyError as e:  # created concurrently after our snapshot
                    raise _write_conflict(collection, document_id) from e
            else:
                # Guarded by the version read above: a concurrent writer makes this a conflict.
                replaced = await documents.replace_one(
                    {"_id": document_id, "version": current.version}, stored, session=session
                )
                if replaced.matched_count != 1:
                    raise _write_conflict(collection, document_id)
            if self._after_document_write is not None:
                await self._after_document_write(
                    WriteContext(session, collection, document_id, plan)
                )
            record: OutboxRecord = plan.outbox_record(
                event_id=new_event_id(),
                collection=collection,
                document_id=document_id,
                time=now,
                traceparent=traceparent,
            )
            await self._outbox.insert_one(record.to_mongo(), session=session)
            return WriteResult(
                id=document_id,
                version=plan.version,
                event_id=record.event_id,
                type=plan.type.value,
                document=plan.document,
                created=current is None or not current.live,
            )

        async with self._client.start_session() as session:
            result: WriteResult = await session.with_transaction(
                in_transaction,
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern("majority"),
            )
        log.info(
            "document_written",
            collection=collection,
            document_id=document_id,
            version=result.version,
            event_id=result.event_id,
            type=result.type,
        )
        return result


def _write_conflict(collection: str, document_id: str) -> OperationFailure:
    """Shaped like the server's WriteConflict so `with_transaction` re-runs the transaction."""
    return OperationFailure(
        f"concurrent write to {collection}/{document_id}",
        code=WRITE_CONFLICT,
        details={"errorLabels": ["TransientTransactionError"], "codeName": "WriteConflict"},
    )
