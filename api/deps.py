"""FastAPI dependencies as `Annotated` aliases; clients come from `app.state` (the lifespan).

Every dependency is `async def` although none awaits: FastAPI runs a plain `def` dependency
in its thread pool, and those hand-offs cost about 30% of a write's time under load.
"""

from __future__ import annotations

from typing import Annotated

import grpc
from elasticsearch import AsyncElasticsearch
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth_client import GrpcAuthClient, Principal
from api.collection_limit import CollectionLimit
from api.consistency import ConsistencyTokens
from api.document_store import MongoDocumentStore
from api.problems import ProblemError, unauthorized
from api.rate_limit import IpNetwork, client_address
from api.validation import DOCUMENT_ID_RE, check_collection_name, check_document_id
from infra.mongo import MongoClient
from infra.naming import reserved_collections
from infra.settings import Settings

BEARER_SCHEME = "bearer"
_bearer = HTTPBearer(
    auto_error=False, scheme_name=BEARER_SCHEME, description="A token from POST /v1/auth/token"
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_mongo_client(request: Request) -> MongoClient:
    client: MongoClient = request.app.state.mongo
    return client


async def get_es(request: Request) -> AsyncElasticsearch:
    es: AsyncElasticsearch = request.app.state.es
    return es


async def get_auth_channel(request: Request) -> grpc.aio.Channel:
    channel: grpc.aio.Channel = request.app.state.auth_channel
    return channel


async def get_auth_client(request: Request) -> GrpcAuthClient:
    client: GrpcAuthClient = request.app.state.auth_client
    return client


async def get_document_store(request: Request) -> MongoDocumentStore:
    store: MongoDocumentStore = request.app.state.document_store
    return store


async def get_consistency_tokens(request: Request) -> ConsistencyTokens:
    tokens: ConsistencyTokens = request.app.state.consistency_tokens
    return tokens


async def get_traceparent(request: Request) -> str | None:
    """Set per request by `RequestMiddleware`."""
    traceparent: str | None = getattr(request.state, "traceparent", None)
    return traceparent


async def get_client_address(request: Request) -> str:
    """The client's address, behind trusted proxies the forwarded one (rate limits key on it)."""
    proxies: tuple[IpNetwork, ...] = request.app.state.trusted_proxies
    return client_address(request.scope, proxies)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MongoClientDep = Annotated[MongoClient, Depends(get_mongo_client)]
EsDep = Annotated[AsyncElasticsearch, Depends(get_es)]
AuthChannelDep = Annotated[grpc.aio.Channel, Depends(get_auth_channel)]
AuthClientDep = Annotated[GrpcAuthClient, Depends(get_auth_client)]
DocumentStoreDep = Annotated[MongoDocumentStore, Depends(get_document_store)]
ConsistencyTokensDep = Annotated[ConsistencyTokens, Depends(get_consistency_tokens)]
TraceparentDep = Annotated[str | None, Depends(get_traceparent)]
ClientAddressDep = Annotated[str, Depends(get_client_address)]


async def get_bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The bearer token as sent; 401 (with `WWW-Authenticate`) when there is none."""
    if credentials is None or not credentials.credentials.strip():
        raise unauthorized("a bearer token is required (POST /v1/auth/token)")
    return credentials.credentials.strip()


BearerTokenDep = Annotated[str, Depends(get_bearer_token)]


async def get_principal(token: BearerTokenDep, auth: AuthClientDep) -> Principal:
    """The verified bearer token's principal; 401 otherwise."""
    return await auth.verify(token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ProblemError(403, "this operation needs the admin role on every collection")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


async def valid_collection(
    collection: Annotated[
        str,
        Path(
            description="Collection name: `^[a-z][a-z0-9_-]{0,63}$`, not an internal one.",
            max_length=64,
        ),
    ],
    settings: SettingsDep,
) -> str:
    """The path's collection name, checked; the outbox, users and service ones are reserved."""
    return check_collection_name(collection, reserved=reserved_collections(settings.mongo))


async def valid_document_id(
    document_id: Annotated[
        str,
        Path(
            description="Document id.",
            pattern=DOCUMENT_ID_RE.pattern,
            min_length=1,
            max_length=200,
        ),
    ],
) -> str:
    return check_document_id(document_id)


CollectionDep = Annotated[str, Depends(valid_collection)]
DocumentIdDep = Annotated[str, Depends(valid_document_id)]


async def require_writer(collection: CollectionDep, principal: PrincipalDep) -> Principal:
    """A writer or admin whose scope covers the path's collection; 403 otherwise."""
    if not principal.can_write:
        raise ProblemError(403, "writing needs the writer or admin role")
    if not principal.covers(collection):
        raise ProblemError(403, f"the token's role does not cover collection {collection!r}")
    return principal


WriterDep = Annotated[Principal, Depends(require_writer)]


async def require_reader(
    collection: CollectionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    auth: AuthClientDep,
) -> Principal | None:
    """Reads are public unless `OUTBOX_API_PUBLIC_READS=false`; then a token whose scope
    covers the collection is needed (401 without one, 403 outside its scope)."""
    if settings.api.public_reads:
        return None  # a token sent anyway is not even verified: it grants nothing more
    principal = await get_principal(await get_bearer_token(credentials), auth)
    if not principal.covers(collection):
        raise ProblemError(403, f"the token's role does not cover collection {collection!r}")
    return principal


ReaderDep = Annotated[Principal | None, Depends(require_reader)]


async def get_collection_limit(request: Request) -> CollectionLimit:
    limit: CollectionLimit = request.app.state.collection_limit
    return limit


async def writable_collection(
    collection: CollectionDep,
    _writer: WriterDep,
    limit: Annotated[CollectionLimit, Depends(get_collection_limit)],
) -> str:
    """The path's collection, for a write that may create it: within the collection cap."""
    await limit.check(collection)
    return collection


WritableCollectionDep = Annotated[str, Depends(writable_collection)]
