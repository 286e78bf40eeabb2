"""Elasticsearch side of the indexer: indices behind aliases and one bulk request per batch."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import structlog
from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from indexer.projection import IndexAction
from infra.elastic import is_retriable_status, map_elastic_error
from infra.errors import FatalError, RetriableError
from infra.index_layout import index_mapping, index_name
from infra.settings import ElasticSettings

log = structlog.get_logger(__name__)

# Keeps the bulk response small: statuses and errors only, not one echo per document.
_BULK_FILTER_PATH = "errors,items.*.status,items.*.error.type,items.*.error.reason"


class ItemResult(enum.Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"  # 409: the index holds this version or a newer one
    POISON = "poison"  # a 4xx no retry can fix (mapping conflict, bad id, ...)
    RETRY = "retry"  # 429, 5xx, or the index vanished under us


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    result: ItemResult
    error: str = ""


def classify_item(status: int, error: Mapping[str, Any] | None) -> ItemOutcome:
    """One bulk item's status → what the indexer does with its event."""
    if 200 <= status < 300:
        return ItemOutcome(ItemResult.APPLIED)
    reason = ""
    if error:
        reason = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    if status == 409:
        return ItemOutcome(ItemResult.ALREADY_APPLIED, reason)
    # 404: the index behind the alias was removed (an operator's mistake or a reindex in
    # flight); recreating it and retrying loses nothing.
    if status == 404 or is_retriable_status(status):
        return ItemOutcome(ItemResult.RETRY, f"{status} {reason}")
    return ItemOutcome(ItemResult.POISON, f"Elasticsearch rejected the event ({status}) {reason}")


def bulk_body(actions: Sequence[IndexAction]) -> bytes:
    """NDJSON for the bulk API, serialised once with orjson."""
    parts: list[bytes] = []
    for action in actions:
        parts.append(orjson.dumps(action.bulk_header()))
        parts.append(orjson.dumps(action.source))
    parts.append(b"")
    return b"\n".join(parts)


class ElasticsearchSink:
    """Creates each collection's index on first use and applies batches with one bulk call."""

    def __init__(self, client: AsyncElasticsearch, settings: ElasticSettings) -> None:
        self._client = client
        self._settings = settings
        self._ready_aliases: set[str] = set()

    async def ensure_index(self, collection: str) -> str:
        """The collection's alias, after creating index and alias if neither exists yet."""
        alias = self._settings.alias_for(collection)
        if alias in self._ready_aliases:
            return alias
        try:
            exists = bool(await self._client.indices.exists_alias(name=alias))
            if not exists:
                await self._create(collection, alias)
        except (TransportError, ApiError) as e:
            raise map_elastic_error(e) from e
        self._ready_aliases.add(alias)
        return alias

    async def _create(self, collection: str, alias: str) -> None:
        index = index_name(alias, 1)
        try:
            mapping = index_mapping(self._settings.mappings.get(collection))
        except ValueError as e:
            raise FatalError(f"OUTBOX_ES_MAPPINGS for {collection!r}: {e}") from e
        try:
            await self._client.indices.create(
                index=index, mappings=mapping, aliases={alias: {"is_write_index": True}}
            )
        except ApiError as e:
            if _error_type(e) == "resource_already_exists_exception":
                # Another indexer won the race, or the alias was removed by hand: make sure
                # the alias points at the index again.
                await self._client.indices.put_alias(index=index, name=alias)
                return
            if is_retriable_status(e.meta.status):
                raise RetriableError(f"creating index {index}: {e}") from e
            # A bad mapping override is a configuration error: no event can fix it.
            raise FatalError(f"Elasticsearch refused to create index {index}: {e}") from e
        log.info("index_created", collection=collection, index=index, alias=alias)

    def forget(self, alias: str) -> None:
        """Check the alias again before the next write (after a 404 from the bulk API)."""
        self._ready_aliases.discard(alias)

    async def bulk(self, actions: Sequence[IndexAction]) -> list[ItemOutcome]:
        """Apply `actions` in one request; one outcome per action, in order.

        Raises `RetriableError` when the request as a whole failed (connection loss,
        429, 5xx): nothing is known about any item then, and the caller retries them all.
        """
        if not actions:
            return []
        try:
            response = await self._client.bulk(
                # Pre-serialised NDJSON bytes pass through the client's serializer as is.
                operations=cast(Any, bulk_body(actions)),
                filter_path=_BULK_FILTER_PATH,
            )
        except (TransportError, ApiError) as e:
            raise map_elastic_error(e) from e
        body = response.body
        if not body.get("errors"):
            return [ItemOutcome(ItemResult.APPLIED)] * len(actions)
        items = body.get("items") or []
        if len(items) != len(actions):
            raise RetriableError(f"bulk answered {len(items)} items for {len(actions)} operations")
        outcomes: list[ItemOutcome] = []
        for item in items:
            (result,) = item.values()
            outcomes.append(classify_item(int(result.get("status", 500)), result.get("error")))
        return outcomes


def _error_type(e: ApiError) -> str:
    body = e.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("type", ""))
    return ""
