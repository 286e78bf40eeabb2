"""Runs a search against a collection's alias: mapping lookup (cached briefly), query, page."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError

from api.consistency import WrittenVersion
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
from infra.index_layout import ID_FIELD, VERSION_FIELD
from infra.settings import ElasticSettings

log = structlog.get_logger(__name__)

# New fields appear in the mapping as documents bring them; a short cache keeps one
# mapping read off most searches without hiding a new field for long.
MAPPING_TTL_S = 5.0
# What an anonymous caller learns when Elasticsearch refuses a search: never its reason,
# which names concrete indices and fields (the reason is logged).
REJECTED_DETAIL = (
    "Elasticsearch could not run this search: a filter or sort value does not suit the "
    "field's type, or a search_after token does not fit this collection's index"
)
WAIT_POLL_MIN_S = 0.01
WAIT_POLL_MAX_S = 0.2


class SearchUnavailableError(RetriableError):
    """Elasticsearch did not answer (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class SearchPage:
    total: int
    hits: list[dict[str, Any]]
    next: str | None
    total_relation: str = "eq"  # "gte": at least `total` (counting stopped at the cap)
    timed_out: bool = False  # Elasticsearch stopped at the timeout: hits may be missing

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "total_relation": self.total_relation,
            "timed_out": self.timed_out,
            "hits": self.hits,
            "next": self.next,
        }


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
            log.info(
                "search_rejected", collection=collection, status=e.meta.status, reason=_reason(e)
            )
            raise SearchParamError(REJECTED_DETAIL) from e
        except TransportError as e:
            raise SearchUnavailableError("Elasticsearch is unreachable") from e
        hits = response["hits"]["hits"]
        total = response["hits"]["total"]
        return SearchPage(
            total=int(total["value"] if isinstance(total, dict) else total),
            total_relation=str(total.get("relation", "eq")) if isinstance(total, dict) else "eq",
            timed_out=bool(response.get("timed_out", False)),
            hits=public_hits(hits),
            next=next_token(hits, size=params.size, sort=params.sort),
        )

    async def wait_searchable(self, written: Sequence[WrittenVersion], timeout_s: float) -> int:
        """Wait until search sees each written version (or a newer one); tombstones count,
        so a delete is "seen" once search no longer finds the document. Returns how many
        are still not searchable when `timeout_s` ran out (0: all are)."""
        pending: dict[str, dict[str, int]] = {}
        for w in written:
            versions = pending.setdefault(w.collection, {})
            versions[w.document_id] = max(versions.get(w.document_id, 0), w.version)
        deadline = time.monotonic() + timeout_s
        delay = WAIT_POLL_MIN_S
        while True:
            for collection in list(pending):
                if await self._searchable(collection, pending[collection]):
                    del pending[collection]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return sum(len(versions) for versions in pending.values())
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, WAIT_POLL_MAX_S)

    async def _searchable(self, collection: str, versions: dict[str, int]) -> bool:
        """Whether a search (refresh-dependent, unlike a realtime get) finds every document
        of `versions` at that version or later."""
        should = [
            {
                "bool": {
                    "filter": [
                        {"term": {ID_FIELD: document_id}},
                        {"range": {VERSION_FIELD: {"gte": version}}},
                    ]
                }
            }
            for document_id, version in versions.items()
        ]
        try:
            response = await self._client.search(
                index=self._settings.alias_for(collection),
                query={"bool": {"should": should, "minimum_should_match": 1}},
                size=0,
                track_total_hits=True,
            )
        except NotFoundError:
            return False  # no index yet: the collection's first event is not indexed
        except ApiError as e:
            if is_retriable_status(e.meta.status):
                raise SearchUnavailableError(f"Elasticsearch {e.meta.status}") from e
            raise
        except TransportError as e:
            raise SearchUnavailableError("Elasticsearch is unreachable") from e
        total = response["hits"]["total"]
        found = int(total["value"] if isinstance(total, dict) else total)
        return found >= len(versions)

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
    """Elasticsearch's own reason (the first root cause: "all shards failed" says little)."""
    body = e.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            causes = error.get("root_cause")
            if isinstance(causes, list) and causes and isinstance(causes[0], dict):
                error = causes[0]
            return str(error.get("reason") or error.get("type") or e.message)[:300]
    return str(e.message)[:300]
