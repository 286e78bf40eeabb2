"""Elasticsearch side of the indexer: each collection's index behind its alias, bulk requests.

`ensure_index` checks before it creates: an alias may not take the name of an existing
concrete index. Elasticsearch refuses such an alias (`invalid_alias_name_exception`); the
embedded stand-in accepts it and then mixes the two indices' documents, so the check is
ours. It happens when a deployment from before the `.v<N>` naming still has a
`<alias>-v<N>` index and a writer uses the collection named like it (`books-v1` for
`books`'s `outbox-books-v1`). Any index-level refusal (that one, a bad mapping override,
the shard limit, a 4xx from index creation) is `IndexUnusableError`: the service parks
that collection; it never stops the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import structlog
from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from indexer.batch import APPLIED, ItemOutcome, classify_item
from infra.elastic import is_retriable_status
from infra.errors import PipelineError, RetriableError
from infra.index_layout import index_mapping, index_name
from infra.index_limits import index_limits
from infra.settings import ElasticSettings

log = structlog.get_logger(__name__)

# Keeps the bulk response small: statuses and errors only, not one echo per document.
_BULK_FILTER_PATH = "errors,items.*.status,items.*.error.type,items.*.error.reason"


class IndexUnusableError(PipelineError):
    """A collection's index cannot take writes for now (the collection is parked)."""


class BulkRequestRefusedError(PipelineError):
    """Elasticsearch refused a whole bulk request with a 4xx (413: too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ElasticsearchSink:
    """Creates each collection's index on first use and sends bulk requests."""

    def __init__(self, client: AsyncElasticsearch, settings: ElasticSettings) -> None:
        self._client = client
        self._settings = settings
        self._ready_aliases: set[str] = set()
        # Indices this process created and has not refreshed yet (see `_refresh_new`).
        self._unrefreshed: set[str] = set()

    def alias_for(self, collection: str) -> str:
        return self._settings.alias_for(collection)

    async def ensure_index(self, collection: str) -> str:
        """The collection's alias, after creating index and alias if neither exists yet.

        Raises `IndexUnusableError` when Elasticsearch will not let the collection have
        its index (park it), `RetriableError` when Elasticsearch is unreachable or busy.
        """
        alias = self.alias_for(collection)
        if alias in self._ready_aliases:
            return alias
        try:
            if not await self._client.indices.exists_alias(name=alias):
                if await self._client.indices.exists(index=alias):
                    raise IndexUnusableError(
                        f"{alias!r} is a concrete index, so it cannot be the alias of "
                        f"collection {collection!r} (an index of another collection from "
                        f"before the `.v<N>` naming?); `outbox reindex` that collection "
                        f"to free the name"
                    )
                await self._create(collection, alias)
        except ApiError as e:
            if is_retriable_status(e.meta.status):
                raise RetriableError(f"Elasticsearch {e.meta.status} for {alias}: {e}") from e
            raise IndexUnusableError(f"Elasticsearch refused index {alias}: {e}") from e
        except TransportError as e:
            raise RetriableError(f"Elasticsearch unreachable: {e}") from e
        self._ready_aliases.add(alias)
        return alias

    async def _create(self, collection: str, alias: str) -> None:
        index = index_name(alias, 1)
        try:
            mapping = index_mapping(self._settings.mappings.get(collection))
        except ValueError as e:
            raise IndexUnusableError(f"OUTBOX_ES_MAPPINGS for {collection!r}: {e}") from e
        try:
            await self._client.indices.create(
                index=index,
                mappings=mapping,
                settings={
                    **index_limits(self._settings, collection).index_settings(),
                    "index.refresh_interval": refresh_interval(self._settings),
                },
                aliases={alias: {"is_write_index": True}},
            )
        except ApiError as e:
            if _error_type(e) != "resource_already_exists_exception":
                raise
            # Another indexer won the race, or the alias was removed by hand: make sure
            # the alias points at the index again.
            await self._client.indices.put_alias(index=index, name=alias)
            return
        self._unrefreshed.add(index)
        log.info("index_created", collection=collection, index=index, alias=alias)

    def forget(self, collection: str) -> None:
        """Check the collection's alias again before its next write (after a 404)."""
        self._ready_aliases.discard(self.alias_for(collection))

    async def bulk(self, bodies: Sequence[bytes]) -> list[ItemOutcome]:
        """Send the actions' NDJSON `bodies` as one request; one outcome each, in order.

        Raises `RetriableError` when the request as a whole failed (connection loss, 429,
        5xx): nothing is known about any item then. Raises `BulkRequestRefusedError` for a
        4xx answer to the whole request (413: larger than `http.max_content_length`).
        """
        if not bodies:
            return []
        try:
            response = await self._client.bulk(
                # Pre-serialised NDJSON bytes pass through the client's serializer as is.
                operations=cast(Any, b"".join(bodies)),
                filter_path=_BULK_FILTER_PATH,
            )
        except ApiError as e:
            if is_retriable_status(e.meta.status):
                raise RetriableError(f"Elasticsearch {e.meta.status}: {e}") from e
            raise BulkRequestRefusedError(e.meta.status, f"bulk request refused: {e}") from e
        except TransportError as e:
            raise RetriableError(f"Elasticsearch unreachable: {e}") from e
        if self._unrefreshed:
            await self._refresh_new()
        body = response.body
        if not body.get("errors"):
            return [APPLIED] * len(bodies)
        items = body.get("items") or []
        if len(items) != len(bodies):
            raise RetriableError(f"bulk answered {len(items)} items for {len(bodies)} operations")
        outcomes: list[ItemOutcome] = []
        for item in items:
            (result,) = item.values()
            outcomes.append(classify_item(int(result.get("status", 500)), result.get("error")))
        return outcomes

    async def _refresh_new(self) -> None:
        """Refresh the indices created since the last bulk, once, right after their first
        documents went in: the first write to a new collection is searchable then, instead
        of at the index's first periodic refresh (up to `refresh_interval_s` later). Every
        later write waits for the periodic refresh as usual. Best effort."""
        indices, self._unrefreshed = sorted(self._unrefreshed), set()
        try:
            await self._client.indices.refresh(index=",".join(indices))
        except (ApiError, TransportError) as e:
            log.warning("new_index_refresh_failed", indices=indices, error=str(e))


def _error_type(e: ApiError) -> str:
    body = e.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("type", ""))
    return ""


def refresh_interval(settings: ElasticSettings) -> str:
    """`OUTBOX_ES_REFRESH_INTERVAL_S` as Elasticsearch's `index.refresh_interval` value."""
    return f"{max(1, round(settings.refresh_interval_s * 1000))}ms"
