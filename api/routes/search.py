"""Public search over a collection's Elasticsearch index (tombstones never appear)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api.deps import CollectionDep, EsDep, SettingsDep
from api.problems import ProblemError, service_unavailable
from api.schemas import PROBLEM_RESPONSES
from api.search_adapter import ElasticsearchSearcher, SearchUnavailableError
from api.search_query import DEFAULT_SIZE, MAX_SIZE, SearchParamError, SearchParams

router = APIRouter(tags=["search"])


async def _searcher(request: Request, es: EsDep, settings: SettingsDep) -> ElasticsearchSearcher:
    # One per app, made on first use, so its mapping cache outlives a request. Async on
    # purpose: FastAPI runs a plain `def` dependency in its thread pool.
    searcher: ElasticsearchSearcher | None = getattr(request.app.state, "searcher", None)
    if searcher is None:
        searcher = ElasticsearchSearcher(es, settings.es)
        request.app.state.searcher = searcher
    return searcher


SearcherDep = Annotated[ElasticsearchSearcher, Depends(_searcher)]


@router.get(
    "/v1/collections/{collection}/search",
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in {400, 422, 503}},
)
async def search(
    *,
    collection: CollectionDep,
    searcher: SearcherDep,
    q: Annotated[
        str | None, Query(description="Simple query string over the document's text fields.")
    ] = None,
    filter_: Annotated[
        list[str] | None,
        Query(
            alias="filter",
            description="`field:value`, exact match on a document field; repeat to AND.",
        ),
    ] = None,
    sort: Annotated[
        str | None,
        Query(description="`field` ascending or `-field` descending; `_score`, `_version`."),
    ] = None,
    size: Annotated[int, Query(ge=1, le=MAX_SIZE, description="Hits per page.")] = DEFAULT_SIZE,
    search_after: Annotated[
        str | None, Query(description="The `next` token of the previous page.")
    ] = None,
) -> dict[str, Any]:
    """Search the collection: `{"total", "hits": [{"id", "version", "score", "document"}],
    "next"}`. Eventually consistent with writes; an unknown collection has no hits."""
    params = SearchParams(
        q=q, filters=tuple(filter_ or ()), sort=sort, size=size, search_after=search_after
    )
    try:
        page = await searcher.search(collection, params)
    except SearchParamError as e:
        raise ProblemError(400, str(e), title="Invalid search") from e
    except SearchUnavailableError as e:
        raise service_unavailable(str(e)) from e
    return page.to_json()
