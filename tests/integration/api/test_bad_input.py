"""Bad input gets a clear 4xx problem and writes nothing (real MongoDB and auth service)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fixtures.api import ApiHandle

DOCS = "/v1/collections/books/documents"
ONE_MIB = 1024 * 1024


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


async def assert_nothing_written(api: ApiHandle) -> None:
    assert await api.outbox.count_documents({}) == 0
    names = await api.db.list_collection_names()
    for name in names:
        if name not in {api.settings.mongo.outbox_collection, api.settings.mongo.users_collection}:
            assert await api.db[name].count_documents({}) == 0, name


def as_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["detail"]
    return body


BAD_JSON_BODIES = [
    pytest.param("POST", DOCS, {"json": [1, 2]}, 422, id="array-body"),
    pytest.param("POST", DOCS, {"json": "text"}, 422, id="string-body"),
    pytest.param("PUT", f"{DOCS}/x", {"content": b"null"}, 422, id="null-body"),
    pytest.param("POST", DOCS, {"json": {"$set": {"a": 1}}}, 422, id="dollar-key"),
    pytest.param("POST", DOCS, {"json": {"a": {"b.c": 1}}}, 422, id="dotted-key"),
    pytest.param("POST", DOCS, {"json": {"a": [{"n\x00ul": 1}]}}, 422, id="nul-key"),
    pytest.param("PATCH", f"{DOCS}/x", {"json": {"x": {"$inc": 1}}}, 422, id="dollar-key-patch"),
    pytest.param("POST", DOCS, {"json": nested(33)}, 422, id="depth-33"),
    pytest.param("POST", DOCS, {"json": {"n": 2**63}}, 422, id="int-over-64-bits"),
    pytest.param("POST", DOCS, {"content": b"{not json"}, 400, id="invalid-json"),
    pytest.param("POST", DOCS, {"content": b""}, 400, id="empty-body"),
    pytest.param("POST", DOCS, {"json": {"id": "bad id!"}}, 422, id="bad-body-id"),
    pytest.param("POST", DOCS, {"json": {"id": 12}}, 422, id="non-string-id"),
    pytest.param("PUT", f"{DOCS}/x", {"json": {"id": "y"}}, 422, id="body-id-differs"),
    pytest.param("PUT", f"{DOCS}/.x", {"json": {}}, 422, id="bad-path-id"),
    pytest.param("PUT", f"{DOCS}/{'x' * 201}", {"json": {}}, 422, id="long-path-id"),
    pytest.param("POST", "/v1/collections/Books/documents", {"json": {}}, 422, id="uppercase"),
    pytest.param("POST", "/v1/collections/1b/documents", {"json": {}}, 422, id="digit-first"),
    pytest.param("POST", f"/v1/collections/{'b' * 65}/documents", {"json": {}}, 422, id="65ch"),
    pytest.param("POST", "/v1/collections/outbox/documents", {"json": {}}, 422, id="reserved"),
    pytest.param("POST", "/v1/collections/users/documents", {"json": {}}, 422, id="users"),
    pytest.param(
        "POST",
        DOCS,
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
        415,
        id="media-type",
    ),
    pytest.param("POST", DOCS, {"content": b"x" * (ONE_MIB + 1)}, 413, id="over-1mib"),
]


@pytest.mark.parametrize(("method", "url", "kwargs", "status"), BAD_JSON_BODIES)
async def test_bad_input_is_a_4xx_problem_and_writes_nothing(
    api_client: ApiHandle, method: str, url: str, kwargs: dict[str, Any], status: int
) -> None:
    headers = {**await api_client.writer_headers(), **kwargs.pop("headers", {})}
    r = await api_client.client.request(method, url, headers=headers, **kwargs)
    as_problem(r, status)
    await assert_nothing_written(api_client)


async def test_a_chunked_body_over_the_limit_is_413_without_content_length(
    api_client: ApiHandle,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"big": "'
        for _ in range(40):
            sent += 64 * 1024
            yield b"x" * (64 * 1024)
        yield b'"}'

    headers = await api_client.writer_headers()
    r = await api_client.client.post(DOCS, content=chunks(), headers=headers)
    assert "content-length" not in r.request.headers
    as_problem(r, 413)
    await assert_nothing_written(api_client)


async def test_a_document_just_under_the_limit_is_accepted(api_client: ApiHandle) -> None:
    body = b'{"big": "' + b"x" * (ONE_MIB - 100) + b'"}'
    r = await api_client.client.post(DOCS, content=body, headers=await api_client.writer_headers())
    assert r.status_code == 201


async def test_a_patch_that_grows_past_the_limit_is_refused(api_client: ApiHandle) -> None:
    h = await api_client.writer_headers()
    half = "x" * (ONE_MIB // 2 + 10)
    assert (await api_client.client.put(f"{DOCS}/g", json={"a": half}, headers=h)).is_success
    r = await api_client.client.patch(f"{DOCS}/g", json={"b": half}, headers=h)
    as_problem(r, 422)
    assert await api_client.outbox.count_documents({}) == 1


async def test_reads_of_bad_names_are_4xx_too(api_client: ApiHandle) -> None:
    as_problem(await api_client.client.get("/v1/collections/users/documents/x"), 422)
    as_problem(await api_client.client.get(f"{DOCS}/bad%20id"), 422)
    as_problem(await api_client.client.get(f"{DOCS}/missing"), 404)
