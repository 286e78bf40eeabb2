"""Document routes: transactional writes (document + outbox record) and reads from MongoDB.

Every 2xx write answers with a consistency token (`token` in the body, `Outbox-Token` in
the headers) that `GET .../search?after=` waits on; `POST` accepts `Idempotency-Key`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from api.consistency import WrittenVersion
from api.deps import (
    CollectionDep,
    ConsistencyTokensDep,
    DocumentIdDep,
    DocumentStoreDep,
    ReaderDep,
    SettingsDep,
    TraceparentDep,
    WritableCollectionDep,
    WriterDep,
)
from api.document_store import IdempotencyKey, WriteResult
from api.problems import ProblemError, problem_responses
from api.request_body import JSON_MEDIA_TYPES, read_json_object
from api.schemas import (
    DOCUMENT_BODY_SCHEMA,
    DOCUMENT_BODY_WITHOUT_ID_SCHEMA,
    DocumentPublic,
    DocumentWritten,
)
from api.validation import MERGE_PATCH_MEDIA_TYPE, split_body_id
from api.write_rules import Create, Delete, IfMatch, Patch, Replace, etag
from infra.settings import Settings

router = APIRouter(prefix="/v1/collections/{collection}/documents", tags=["documents"])

OUTBOX_TOKEN = "Outbox-Token"  # noqa: S105 - a header name, not a secret
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"  # printable ASCII, no spaces

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Write only if the current version matches: `"3"`, `3`, `W/"3"` or `*`.',
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="A repeat with the same key and body returns the first result "
        f"(`{IDEMPOTENT_REPLAYED}: true`); another body with the same key is a 409. "
        "Keys are per user and collection and kept `OUTBOX_API_IDEMPOTENCY_TTL_HOURS`.",
    ),
]
PATCH_MEDIA_TYPES = JSON_MEDIA_TYPES | {MERGE_PATCH_MEDIA_TYPE}


def _body_spec(schema: dict[str, Any], *media_types: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {media_type: {"schema": schema} for media_type in media_types},
        }
    }


def _header(description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"description": description, "schema": schema, "required": True}


_ETAG = {"ETag": _header('The version as a strong entity tag: `"<version>"`.', r'^"[0-9]+"$')}
_TOKEN = {
    OUTBOX_TOKEN: _header("Consistency token: pass it to search as `after` to read this write.")
}
_LOCATION = {"Location": _header("The document's URL.")}
_WRITE_PROBLEMS = (400, 401, 403, 404, 409, 412, 415, 422, 503)


def _written(
    result: WriteResult, response: Response, tokens: ConsistencyTokensDep, collection: str
) -> DocumentWritten:
    assert result.document is not None
    token = tokens.issue(WrittenVersion(collection, result.id, result.version))
    response.headers["ETag"] = etag(result.version)
    response.headers[OUTBOX_TOKEN] = token
    if result.replayed:
        response.headers[IDEMPOTENT_REPLAYED] = "true"
    return DocumentWritten(
        id=result.id,
        version=result.version,
        event_id=result.event_id,
        document=result.document,
        token=token,
    )


async def _body(
    request: Request, settings: Settings, media_types: frozenset[str]
) -> dict[str, Any]:
    return await read_json_object(
        request,
        max_bytes=settings.api.max_body_bytes,
        max_depth=settings.api.max_depth,
        max_key_chars=settings.es.field_name_max_chars,
        media_types=media_types,
    )


def _location(collection: str, document_id: str) -> str:
    return f"/v1/collections/{collection}/documents/{document_id}"


@router.post(
    "",
    status_code=201,
    response_model=DocumentWritten,
    responses={
        201: {"headers": {**_ETAG, **_TOKEN, **_LOCATION}},
        **problem_responses(400, 401, 403, 409, 415, 422, 503),
    },
    openapi_extra=_body_spec(DOCUMENT_BODY_SCHEMA, "application/json"),
)
async def create_document(
    *,
    principal: WriterDep,
    collection: WritableCollectionDep,
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: DocumentStoreDep,
    tokens: ConsistencyTokensDep,
    traceparent: TraceparentDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DocumentWritten:
    """Create a document (an `id` in the body is optional; one is generated otherwise)."""
    body = await _body(request, settings, JSON_MEDIA_TYPES)
    idempotency = (
        None
        if idempotency_key is None
        else IdempotencyKey.of(
            key=idempotency_key, user_id=principal.user_id, collection=collection, request=body
        )
    )
    document_id, document = split_body_id(body, path_id=None)
    document_id = document_id or uuid.uuid4().hex
    result = await store.write(
        collection,
        document_id,
        Create(document),
        traceparent=traceparent,
        auth_id=principal.user_id,
        idempotency=idempotency,
    )
    response.headers["Location"] = _location(collection, result.id)
    return _written(result, response, tokens, collection)


@router.put(
    "/{document_id}",
    response_model=DocumentWritten,
    responses={
        200: {"headers": {**_ETAG, **_TOKEN}},
        201: {
            "description": "Created",
            "model": DocumentWritten,
            "headers": {**_ETAG, **_TOKEN, **_LOCATION},
        },
        **problem_responses(*_WRITE_PROBLEMS),
    },
    openapi_extra=_body_spec(DOCUMENT_BODY_WITHOUT_ID_SCHEMA, "application/json"),
)
async def replace_document(
    *,
    principal: WriterDep,
    collection: WritableCollectionDep,
    document_id: DocumentIdDep,
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: DocumentStoreDep,
    tokens: ConsistencyTokensDep,
    traceparent: TraceparentDep,
    if_match: IfMatchHeader = None,
) -> DocumentWritten:
    """Replace the document, or create it (201); a body `id` must equal the path id."""
    body = await _body(request, settings, JSON_MEDIA_TYPES)
    _, document = split_body_id(body, path_id=document_id)
    result = await store.write(
        collection,
        document_id,
        Replace(document),
        if_match=IfMatch.parse(if_match),
        traceparent=traceparent,
        auth_id=principal.user_id,
    )
    if result.created:
        response.status_code = 201
        response.headers["Location"] = _location(collection, document_id)
    return _written(result, response, tokens, collection)


@router.patch(
    "/{document_id}",
    response_model=DocumentWritten,
    responses={200: {"headers": {**_ETAG, **_TOKEN}}, **problem_responses(*_WRITE_PROBLEMS)},
    openapi_extra=_body_spec(
        DOCUMENT_BODY_WITHOUT_ID_SCHEMA, MERGE_PATCH_MEDIA_TYPE, "application/json"
    ),
)
async def patch_document(
    *,
    principal: WriterDep,
    collection: CollectionDep,
    document_id: DocumentIdDep,
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: DocumentStoreDep,
    tokens: ConsistencyTokensDep,
    traceparent: TraceparentDep,
    if_match: IfMatchHeader = None,
) -> DocumentWritten:
    """Apply a JSON merge patch (RFC 7396) to an existing document."""
    body = await _body(request, settings, PATCH_MEDIA_TYPES)
    if "id" in body:
        if body["id"] != document_id:
            raise ProblemError(422, "a patch cannot change the document id", title="Invalid input")
        body = {k: v for k, v in body.items() if k != "id"}
    result = await store.write(
        collection,
        document_id,
        Patch(body),
        if_match=IfMatch.parse(if_match),
        traceparent=traceparent,
        auth_id=principal.user_id,
    )
    return _written(result, response, tokens, collection)


@router.delete(
    "/{document_id}",
    status_code=204,
    responses={
        204: {"description": "Deleted", "headers": _TOKEN},
        **problem_responses(401, 403, 404, 412, 422, 503),
    },
)
async def delete_document(
    *,
    principal: WriterDep,
    collection: CollectionDep,
    document_id: DocumentIdDep,
    store: DocumentStoreDep,
    tokens: ConsistencyTokensDep,
    traceparent: TraceparentDep,
    if_match: IfMatchHeader = None,
) -> Response:
    """Delete the document (its outbox event is a `deleted` at the next version).

    No body and no `ETag` (there is no representation left); `Outbox-Token` lets a
    search wait until the document is gone from it."""
    result = await store.write(
        collection,
        document_id,
        Delete(),
        if_match=IfMatch.parse(if_match),
        traceparent=traceparent,
        auth_id=principal.user_id,
    )
    token = tokens.issue(WrittenVersion(collection, document_id, result.version))
    return Response(status_code=204, headers={OUTBOX_TOKEN: token})


@router.get(
    "/{document_id}",
    response_model=DocumentPublic,
    responses={200: {"headers": _ETAG}, **problem_responses(401, 403, 404, 422, 503)},
)
async def get_document(
    *,
    reader: ReaderDep,
    collection: CollectionDep,
    document_id: DocumentIdDep,
    response: Response,
    store: DocumentStoreDep,
) -> DocumentPublic:
    """Read a document from MongoDB, the source of truth."""
    stored = await store.get(collection, document_id)
    if stored is None:
        raise ProblemError(
            404, f"no document {document_id!r} in {collection!r}", title="Document not found"
        )
    response.headers["ETag"] = etag(stored.version)
    return DocumentPublic(id=stored.id, version=stored.version, document=stored.document)
