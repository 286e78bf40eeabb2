"""Runs a search against a collection's alias: mapping lookup (cached briefly), query, page."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError

from api.search_query import (
    FieldInfo,
    SearchParamError,
    SearchParams,
    build_search,
    document_fields,
    merge_fields,
    next_token,
    public_hits,
)
from infra.elastic import is_retriable_status
from infra.errors import RetriableError
from infra.settings import ElasticSettings

log = structlog.get_logger(__name__)

# New fields appear in the mapping as documents bring them; a short cache keeps one
# mapping read off most searches without hiding a new field for long.
MAPPING_TTL_S = 5.0


class SearchUnavailableError(RetriableError):
    """Elasticsearch did not answer (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class SearchPage:
    total: int
    hits: list[dict[str, Any]]
    next: str | None

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "hits": self.hits, "next": self.next}


EMPTY_PAGE = SearchPage(total=0, hits=[], next=None)


class ElasticsearchSearcher:
    """Search over `settings.alias_for(collection)`; tombstones never appear."""

    def __init__(self, client: AsyncElasticsearch, settings: ElasticSettings) -> None:
        self._client = client
        self._settings = settings
        self._fields: dict[str, tuple[float, dict[str, FieldInfo]]] = {}

    async def search(self, collection: str, params: SearchParams) -> SearchPage:
        """One page; an unknown collection is an empty page. Raises `SearchParamError`
        for parameters Elasticsearch cannot use, `SearchUnavailableError` when it is away."""
        alias = self._settings.alias_for(collection)
        try:
            fields = await self._document_fields(alias)
            if fields is None:
                build_search(params, {})  # still reject malformed parameters with a 400
                return EMPTY_PAGE
            body = build_search(params, fields)
            response = await self._client.search(index=alias, **body)
        except NotFoundError:
            return EMPTY_PAGE  # the alias went away between mapping and search
        except ApiError as e:
            if is_retriable_status(e.meta.status):
                raise SearchUnavailableError(f"Elasticsearch {e.meta.status}") from e
            # Our own query is well-formed; what Elasticsearch refuses came from the
            # parameters (a date it cannot parse, a token from another index layout).
            log.info("search_rejected", collection=collection, status=e.meta.status)
            raise SearchParamError(f"Elasticsearch rejected the search: {_reason(e)}") from e
        except TransportError as e:
            raise SearchUnavailableError(f"Elasticsearch unreachable: {e}") from e
        hits = response["hits"]["hits"]
        total = response["hits"]["total"]
        return SearchPage(
            total=int(total["value"] if isinstance(total, dict) else total),
            hits=public_hits(hits),
            next=next_token(hits, size=params.size, sort=params.sort),
        )

    async def _document_fields(self, alias: str) -> dict[str, FieldInfo] | None:
        """The alias's document fields, or None when the collection has no index yet."""
        cached = self._fields.get(alias)
        now = time.monotonic()
        if cached is not None and now - cached[0] < MAPPING_TTL_S:
            return cached[1]
        try:
            response = await self._client.indices.get_mapping(index=alias)
        except NotFoundError:
            self._fields.pop(alias, None)
            return None
        fields = merge_fields(
            [document_fields(index.get("mappings", {})) for index in response.body.values()]
        )
        self._fields[alias] = (now, fields)
        return fields


def _reason(e: ApiError) -> str:
    body = e.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("type") or e.message)[:300]
    return str(e.message)[:300]
