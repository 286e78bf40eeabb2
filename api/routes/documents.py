"""Document routes: transactional writes (document + outbox record) and reads from MongoDB."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from api.deps import (
    CollectionDep,
    DocumentIdDep,
    DocumentStoreDep,
    SettingsDep,
    TraceparentDep,
    WritableCollectionDep,
    WriterDep,
)
from api.document_store import WriteResult
from api.problems import ProblemError
from api.request_body import JSON_MEDIA_TYPES, read_json_object
from api.schemas import PROBLEM_RESPONSES, DocumentPublic, DocumentWritten
from api.validation import MERGE_PATCH_MEDIA_TYPE, split_body_id
from api.write_rules import Create, Delete, IfMatch, Patch, Replace, etag
from infra.settings import Settings

router = APIRouter(prefix="/v1/collections/{collection}/documents", tags=["documents"])

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Write only if the current version matches: `"3"`, `3`, `W/"3"` or `*`.',
    ),
]
PATCH_MEDIA_TYPES = JSON_MEDIA_TYPES | {MERGE_PATCH_MEDIA_TYPE}
_JSON_OBJECT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_MERGE_PATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            MERGE_PATCH_MEDIA_TYPE: {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


async def _body(
    request: Request, settings: Settings, media_types: frozenset[str]
) -> dict[str, Any]:
    return await read_json_object(
        request,
        max_bytes=settings.api.max_body_bytes,
        max_depth=settings.api.max_depth,
        media_types=media_types,
    )


def _location(collection: str, document_id: str) -> str:
    return f"/v1/collections/{collection}/documents/{document_id}"


def _written(result: WriteResult, response: Response) -> DocumentWritten:
    assert result.document is not None
    response.headers["ETag"] = etag(result.version)
    return DocumentWritten(
        id=result.id, version=result.version, event_id=result.event_id, document=result.document
    )


@router.post(
    "",
    status_code=201,
    response_model=DocumentWritten,
    responses=PROBLEM_RESPONSES,
    openapi_extra=_JSON_OBJECT_BODY,
)
async def create_document(
    *,
    principal: WriterDep,
    collection: WritableCollectionDep,
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: DocumentStoreDep,
    traceparent: TraceparentDep,
) -> DocumentWritten:
    """Create a document (an `id` in the body is optional; one is generated otherwise)."""
    body = await _body(request, settings, JSON_MEDIA_TYPES)
    document_id, document = split_body_id(body, path_id=None)
    document_id = document_id or uuid.uuid4().hex
    result = await store.write(collection, document_id, Create(document), traceparent=traceparent)
    response.headers["Location"] = _location(collection, document_id)
    return _written(result, response)


@router.put(
    "/{document_id}",
    response_model=DocumentWritten,
    responses={**PROBLEM_RESPONSES, 201: {"model": DocumentWritten}},
    openapi_extra=_JSON_OBJECT_BODY,
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
    )
    if result.created:
        response.status_code = 201
        response.headers["Location"] = _location(collection, document_id)
    return _written(result, response)


@router.patch(
    "/{document_id}",
    response_model=DocumentWritten,
    responses=PROBLEM_RESPONSES,
    openapi_extra=_MERGE_PATCH_BODY,
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
    )
    return _written(result, response)


@router.delete("/{document_id}", status_code=204, responses=PROBLEM_RESPONSES)
async def delete_document(
    *,
    principal: WriterDep,
    collection: CollectionDep,
    document_id: DocumentIdDep,
    store: DocumentStoreDep,
    traceparent: TraceparentDep,
    if_match: IfMatchHeader = None,
) -> Response:
    """Delete the document (its outbox event is a `deleted` at the next version)."""
    await store.write(
        collection, document_id, Delete(), if_match=IfMatch.parse(if_match), traceparent=traceparent
    )
    return Response(status_code=204)


@router.get("/{document_id}", response_model=DocumentPublic, responses=PROBLEM_RESPONSES)
async def get_document(
    *,
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
