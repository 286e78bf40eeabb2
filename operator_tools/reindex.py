"""`outbox reindex C`: rebuild a collection's index from MongoDB and swap the alias.

The pipeline keeps running throughout. Steps:

1. create `<alias>.v<N+1>` (`infra/index_layout`) with the current mapping;
2. note the start time T0, then copy every MongoDB document (tombstones included) into
   it with `version_type=external` at the document's version, in `_id` order, in bulk;
3. swap the alias atomically (`update_aliases`: remove it from every index it names, add
   it to the new one as write index) — search answers from the old index until this
   instant and from the new one after it;
4. catch up: copy again every document whose `updated_at` is at or after T0 minus a
   margin (MongoDB's transaction lifetime), so a write the indexer sent to the old index
   during the build reaches the new one. A write committed after the swap is indexed by
   the indexer into the new index itself; external versions make every overlap a no-op;
5. delete the old index (unless `keep_old`).

Why not point the alias at both indices during the build: search reads the alias too,
and would see every document twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from elasticsearch import ApiError, NotFoundError, TransportError

from indexer.batch import Outcome, classify_item
from indexer.projection import IndexAction, action_for
from infra.document_layout import UPDATED_AT
from infra.elastic import map_elastic_error
from infra.envelope import OutboxRecord, utc_now
from infra.errors import FatalError
from infra.index_layout import index_mapping, next_index_name
from infra.index_limits import index_limits
from operator_tools.clients import OperatorClients
from operator_tools.progress_display import NoProgress, Progress
from operator_tools.reconcile import synthesized_record

log = structlog.get_logger(__name__)

BATCH = 1000
# MongoDB's default transactionLifetimeLimitSeconds is 60: a write stamped earlier than
# T0 - margin committed before the build read its document.
CATCH_UP_MARGIN = timedelta(seconds=120)


class ReindexError(FatalError):
    """The new index could not be built; the alias was left where it was."""


def swap_actions(alias: str, old: Sequence[str], new: str) -> list[dict[str, Any]]:
    """One atomic `update_aliases` body: the alias leaves every old index, names `new`."""
    return [
        *({"remove": {"index": o, "alias": alias}} for o in old if o != new),
        {"add": {"index": new, "alias": alias, "is_write_index": True}},
    ]


@dataclass
class ReindexResult:
    collection: str
    alias: str
    new_index: str
    old_indices: list[str]
    copied: int = 0
    caught_up: int = 0
    removed_old: bool = False
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "alias": self.alias,
            "new_index": self.new_index,
            "old_indices": self.old_indices,
            "copied": self.copied,
            "caught_up": self.caught_up,
            "removed_old": self.removed_old,
        }


async def _alias_indices(clients: OperatorClients, alias: str) -> list[str]:
    try:
        response = await clients.es.indices.get_alias(name=alias)
    except NotFoundError:
        return []
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e
    return sorted(response.body)


async def _records(
    clients: OperatorClients, collection: str, raws: Sequence[dict[str, Any]]
) -> list[OutboxRecord]:
    """Each document as the outbox record of its current version (or a synthesized one)."""
    outbox = clients.db[clients.settings.mongo.outbox_collection]
    versions = {str(r["_id"]): int(r["version"]) for r in raws}
    originals: dict[str, OutboxRecord] = {}
    query = {"collection": collection, "document_id": {"$in": list(versions)}}
    async for raw in outbox.find(query, {"payload": 0}):
        if versions.get(raw["document_id"]) == int(raw["version"]):
            raw["payload"] = None
            originals[raw["document_id"]] = OutboxRecord.from_mongo(raw)
    records: list[OutboxRecord] = []
    for raw in raws:
        record = synthesized_record(collection, raw)
        original = originals.get(record.document_id)
        if original is not None:
            # The stored document is the payload; the outbox adds the real event id and time.
            record = OutboxRecord(
                event_id=original.event_id,
                collection=collection,
                document_id=record.document_id,
                version=record.version,
                type=record.type,
                payload=record.payload,
                time=original.time,
            )
        records.append(record)
    return records


async def _copy(
    clients: OperatorClients,
    collection: str,
    index: str,
    *,
    query: dict[str, Any],
    progress: Progress,
    failures: list[str],
) -> int:
    """Bulk every matching MongoDB document into `index` (external versions); count them."""
    copied = 0
    batch: list[dict[str, Any]] = []

    async def flush() -> None:
        nonlocal copied
        now = utc_now()
        actions: list[IndexAction] = []
        for record in await _records(clients, collection, batch):
            try:
                actions.append(action_for(record, alias=index, indexed_at=now))
            except ValueError as e:
                failures.append(f"{record.document_id}: {e}")
        if actions:
            try:
                # The new index has no alias yet: these name it directly (no require_alias).
                body = b"".join(action.ndjson(require_alias=False) for action in actions)
                response = await clients.es.bulk(
                    operations=cast(Any, body),  # NDJSON bytes, sent as is
                    filter_path="errors,items.*.status,items.*.error.type,items.*.error.reason",
                )
            except (ApiError, TransportError) as e:
                raise map_elastic_error(e) from e
            if response.body.get("errors"):
                for action, item in zip(actions, response.body["items"], strict=True):
                    (result,) = item.values()
                    outcome = classify_item(int(result.get("status", 500)), result.get("error"))
                    if outcome.outcome not in (Outcome.APPLIED, Outcome.ALREADY_APPLIED):
                        failures.append(f"{action.document_id}: {outcome.error}")
        copied += len(batch)
        progress.advance(len(batch))
        batch.clear()

    cursor = clients.db[collection].find(query).sort("_id", 1)
    async with cursor.batch_size(BATCH) as docs:
        async for raw in docs:
            batch.append(raw)
            if len(batch) >= BATCH:
                await flush()
    if batch:
        await flush()
    return copied


async def reindex(
    clients: OperatorClients,
    collection: str,
    *,
    keep_old: bool = False,
    progress: Progress | None = None,
    actor: str = "cli",
    catch_up_margin: timedelta = CATCH_UP_MARGIN,
    before_swap: Callable[[], Awaitable[None]] | None = None,
) -> ReindexResult:
    """Build a new index from MongoDB, swap the alias, catch up (see the module docstring).

    `before_swap` runs between the build and the swap (tests widen the race window with it).
    """
    progress = progress or NoProgress()
    es = clients.es
    alias = clients.settings.es.alias_for(collection)
    try:
        if await es.indices.exists(index=alias) and not await es.indices.exists_alias(name=alias):
            raise ReindexError(f"{alias} is a concrete index, not an alias; rename it first")
        old = await _alias_indices(clients, alias)
        try:
            mapping = index_mapping(clients.settings.es.mappings.get(collection))
        except ValueError as e:
            raise ReindexError(f"OUTBOX_ES_MAPPINGS for {collection!r}: {e}") from e
        all_indices = list(
            (await es.indices.get(index=f"{alias}.v*,{alias}-v*", allow_no_indices=True)).body
        )
        new = next_index_name(alias, [*old, *all_indices])
        await es.indices.create(
            index=new,
            mappings=mapping,
            settings=index_limits(clients.settings.es, collection).index_settings(),
        )
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e
    result = ReindexResult(collection, alias, new, old)
    log.info("reindex_started", actor=actor, collection=collection, new_index=new, old=old)
    started = utc_now()
    coll = clients.db[collection]
    progress.start(f"copying {collection} into {new}", await coll.estimated_document_count())
    result.copied = await _copy(
        clients, collection, new, query={}, progress=progress, failures=result.failures
    )
    if result.failures:
        await es.indices.delete(index=new)
        raise ReindexError(
            f"{len(result.failures)} documents could not be indexed into {new} (removed; "
            f"alias unchanged), e.g. {result.failures[0]}"
        )
    if before_swap is not None:
        await before_swap()
    try:
        await es.indices.refresh(index=new)
        # Re-read: the indexer may have created the first index meanwhile.
        current = await _alias_indices(clients, alias)
        await es.indices.update_aliases(actions=swap_actions(alias, current, new))
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e
    result.old_indices = sorted(set(old) | set(current))
    log.info("alias_swapped", actor=actor, collection=collection, alias=alias, index=new)
    cutoff: datetime = started - catch_up_margin
    recent = {"$or": [{UPDATED_AT: {"$gte": cutoff}}, {UPDATED_AT: {"$exists": False}}]}
    progress.start(f"catching up {collection}", await coll.count_documents(recent))
    result.caught_up = await _copy(
        clients, collection, new, query=recent, progress=progress, failures=result.failures
    )
    try:
        await es.indices.refresh(index=new)
        if not keep_old and result.old_indices:
            await es.indices.delete(index=",".join(result.old_indices))
            result.removed_old = True
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e
    log.info("reindex_finished", actor=actor, **result.as_dict())
    if result.failures:
        raise ReindexError(
            f"catch-up could not index {len(result.failures)} documents, e.g. {result.failures[0]}"
        )
    return result
