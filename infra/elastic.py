"""Elasticsearch async client factory and error mapping."""

from __future__ import annotations

from elastic_transport.client_utils import DEFAULT
from elasticsearch import ApiError, AsyncElasticsearch, TransportError
from elasticsearch import ConnectionError as EsConnectionError

from infra.errors import FatalError, RetriableError, ServerUnreachableError
from infra.settings import ElasticSettings, redact_uri


def elastic_client(settings: ElasticSettings) -> AsyncElasticsearch:
    """The async client (needs aiohttp). Retries are ours, not the transport's."""
    auth = (
        (settings.username, settings.password.get_secret_value())
        if settings.username and settings.password
        else None
    )
    return AsyncElasticsearch(
        settings.url,
        basic_auth=auth,
        ca_certs=settings.ca_certs or DEFAULT,
        request_timeout=settings.request_timeout_s,
        max_retries=0,
        retry_on_timeout=False,
    )


async def ping(client: AsyncElasticsearch, settings: ElasticSettings) -> None:
    try:
        await client.info()
    except (TransportError, ApiError) as e:
        raise ServerUnreachableError(
            f"Elasticsearch at {redact_uri(settings.url)} is unreachable: {e}"
        ) from e


def is_retriable_status(status: int) -> bool:
    """429 and 5xx can succeed later; other 4xx will fail the same way every time."""
    return status == 429 or status >= 500


def map_elastic_error(e: Exception) -> RetriableError | FatalError:
    if isinstance(e, EsConnectionError | TransportError):
        return RetriableError(f"Elasticsearch unreachable: {e}")
    if isinstance(e, ApiError) and is_retriable_status(e.meta.status):
        return RetriableError(f"Elasticsearch {e.meta.status}: {e}")
    return FatalError(str(e))
