"""FastAPI dependencies as `Annotated` aliases; clients come from `app.state` (the lifespan).

Every dependency is `async def` although none awaits: FastAPI runs a plain `def` dependency
in its thread pool, and those hand-offs cost about 30% of a write's time under load.
"""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from elasticsearch import AsyncElasticsearch
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pymongo.asynchronous.database import AsyncDatabase

from api.auth_client import GrpcAuthClient, Principal
from api.collection_limit import CollectionLimit
from api.document_store import MongoDocumentStore
from api.problems import ProblemError, unauthorized
from api.validation import check_collection_name, check_document_id
from infra.mongo import MongoClient
from infra.naming import reserved_collections
from infra.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A token from POST /v1/auth/token")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_mongo_client(request: Request) -> MongoClient:
    client: MongoClient = request.app.state.mongo
    return client


async def get_db(request: Request) -> AsyncDatabase[dict[str, Any]]:
    settings: Settings = request.app.state.settings
    client: MongoClient = request.app.state.mongo
    return client[settings.mongo.database]


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


async def get_traceparent(request: Request) -> str | None:
    """Set per request by `RequestMiddleware`."""
    traceparent: str | None = getattr(request.state, "traceparent", None)
    return traceparent


SettingsDep = Annotated[Settings, Depends(get_settings)]
MongoClientDep = Annotated[MongoClient, Depends(get_mongo_client)]
DbDep = Annotated[AsyncDatabase[dict[str, Any]], Depends(get_db)]
EsDep = Annotated[AsyncElasticsearch, Depends(get_es)]
AuthChannelDep = Annotated[grpc.aio.Channel, Depends(get_auth_channel)]
AuthClientDep = Annotated[GrpcAuthClient, Depends(get_auth_client)]
DocumentStoreDep = Annotated[MongoDocumentStore, Depends(get_document_store)]
TraceparentDep = Annotated[str | None, Depends(get_traceparent)]


async def get_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    auth: AuthClientDep,
) -> Principal:
    """The verified bearer token's principal; 401 (with `WWW-Authenticate`) otherwise."""
    if credentials is None or not credentials.credentials.strip():
        raise unauthorized("a bearer token is required (POST /v1/auth/token)")
    return await auth.verify(credentials.credentials.strip())


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_writer(principal: PrincipalDep) -> Principal:
    if not principal.can_write:
        raise ProblemError(403, "writing needs the writer or admin role")
    return principal


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ProblemError(403, "this operation needs the admin role")
    return principal


WriterDep = Annotated[Principal, Depends(require_writer)]
AdminDep = Annotated[Principal, Depends(require_admin)]


async def valid_collection(
    collection: Annotated[str, Path(description="Collection name: ^[a-z][a-z0-9_-]{0,63}$")],
    settings: SettingsDep,
) -> str:
    """The path's collection name, checked; the outbox and users collections are reserved."""
    return check_collection_name(collection, reserved=reserved_collections(settings.mongo))


async def valid_document_id(
    document_id: Annotated[
        str, Path(description="Document id: ^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")
    ],
) -> str:
    return check_document_id(document_id)


CollectionDep = Annotated[str, Depends(valid_collection)]
DocumentIdDep = Annotated[str, Depends(valid_document_id)]


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
