"""Public search over a collection's Elasticsearch index (tombstones never appear).

Cost controls: a per-client rate limit (429), a server-side Elasticsearch timeout, a cap
on counted hits, and bounded query operators (`api.search_query`). `after=<token>` waits
until the writes those tokens name are searchable (read your writes); without it, a
search costs nothing extra.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from api.consistency import InvalidConsistencyTokenError
from api.deps import (
    ClientAddressDep,
    CollectionDep,
    ConsistencyTokensDep,
    EsDep,
    ReaderDep,
    SettingsDep,
)
from api.problems import ProblemError, problem_responses, service_unavailable, too_many_requests
from api.rate_limit import TokenBuckets
from api.search_adapter import ElasticsearchSearcher, SearchUnavailableError
from api.search_query import (
    DEFAULT_SIZE,
    MAX_FILTERS,
    MAX_QUERY_CHARS,
    MAX_SIZE,
    SearchParamError,
    SearchParams,
)
from api.search_query import (
    MAX_TOKEN_CHARS as MAX_NEXT_CHARS,
)

router = APIRouter(tags=["search"])

DEFAULT_WAIT_MS = 2000
MAX_WAIT_MS = 10_000
MAX_AFTER_TOKENS = 100
_FIELD = r"[A-Za-z0-9_@-]+(\.[A-Za-z0-9_@-]+)*"


class SearchHit(BaseModel):
    id: str
    version: int | None
    score: float | None
    document: dict[str, Any] | None


class SearchResult(BaseModel):
    """One page. `total` counts exactly up to `OUTBOX_API_SEARCH_MAX_TOTAL`; past that
    `total_relation` is `gte` (at least `total`). `timed_out`: Elasticsearch stopped at
    the search timeout, so hits may be missing."""

    total: int
    total_relation: Literal["eq", "gte"]
    timed_out: bool
    hits: list[SearchHit]
    next: str | None


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
    response_model=SearchResult,
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def search(
    *,
    request: Request,
    reader: ReaderDep,
    collection: CollectionDep,
    searcher: SearcherDep,
    settings: SettingsDep,
    client: ClientAddressDep,
    tokens: ConsistencyTokensDep,
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="Simple query string over the document's text fields: terms, "
            '`+` `|` `-`, `"phrases"`, `( )`, and `term*` prefixes (3+ characters, at most 3).',
        ),
    ] = None,
    filter_: Annotated[
        list[str] | None,
        Query(
            alias="filter",
            max_length=MAX_FILTERS,
            description="`field:value`, exact match on a document field; repeat to AND.",
        ),
    ] = None,
    sort: Annotated[
        str | None,
        Query(
            pattern=rf"^[-+]?{_FIELD}$",
            max_length=257,
            description="`field` ascending or `-field` descending; `_score`, `_version`.",
        ),
    ] = None,
    size: Annotated[int, Query(ge=1, le=MAX_SIZE, description="Hits per page.")] = DEFAULT_SIZE,
    search_after: Annotated[
        str | None,
        Query(max_length=MAX_NEXT_CHARS, description="The `next` token of the previous page."),
    ] = None,
    after: Annotated[
        list[str] | None,
        Query(
            max_length=MAX_AFTER_TOKENS,
            description="Consistency tokens of earlier writes (their `token` / `Outbox-Token`): "
            "answer only once those writes are searchable. Repeatable.",
        ),
    ] = None,
    wait_ms: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_WAIT_MS,
            description="How long to wait for `after`; past it a 503 `not-yet-indexed`.",
        ),
    ] = DEFAULT_WAIT_MS,
) -> dict[str, Any]:
    """Search the collection: `{"total", "total_relation", "timed_out", "hits": [{"id",
    "version", "score", "document"}], "next"}`. Eventually consistent with writes, unless
    `after` names them; an unknown collection has no hits."""
    limits: TokenBuckets = request.app.state.search_limits
    wait = limits.take(client)
    if wait is not None:
        raise too_many_requests(
            "too many searches from this address; slow down", type_="rate-limited", wait_s=wait
        )
    if after:
        try:
            written = [tokens.read(token) for token in after]
        except InvalidConsistencyTokenError as e:
            raise ProblemError(400, str(e), title="Invalid search") from e
        try:
            pending = await searcher.wait_searchable(written, wait_ms / 1000)
        except SearchUnavailableError as e:
            raise service_unavailable(str(e)) from e
        if pending:
            raise ProblemError(
                503,
                f"{pending} of the writes named by `after` are not searchable yet "
                f"after {wait_ms} ms",
                title="Not yet indexed",
                type_="not-yet-indexed",
                headers={"Retry-After": "1"},
                extra={"pending": pending},
            )
    params = SearchParams(
        q=q,
        filters=tuple(filter_ or ()),
        sort=sort,
        size=size,
        search_after=search_after,
        timeout_ms=settings.api.search_timeout_ms,
        max_total=settings.api.search_max_total,
    )
    try:
        page = await searcher.search(collection, params)
    except SearchParamError as e:
        raise ProblemError(400, str(e), title="Invalid search") from e
    except SearchUnavailableError as e:
        raise service_unavailable(str(e)) from e
    return page.to_json()
