"""The API refuses what Elasticsearch could never index, and caps the number of collections
(security M3): a 4xx problem naming the limit, and nothing written."""

from __future__ import annotations

from typing import Any

import pytest

from infra.settings import ApiSettings
from tests.fixtures.api import ApiHandle, open_api
from tests.fixtures.auth import AuthHandle

DOCS = "/v1/collections/books/documents"


def nest(levels: int) -> dict[str, Any]:
    """Objects nested `levels` deep; the document itself is level 1."""
    doc: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


# Elasticsearch: 1000 fields per index, 7 of them the envelope (id, version, deleted,
# document, event_id, committed_at, indexed_at); a string maps text plus `.keyword`.
# Depth 20, the `document` object being one level. Keys: our own 256-byte limit.
AT_THE_LIMIT = {
    "fields": {f"f{i}": i for i in range(993)},
    "strings": {**{f"s{i}": "x" for i in range(496)}, "n": 1},
    "depth": nest(19),
    "key": {"k" * 256: 1},
    "key-multibyte": {"é" * 256: 1},
}
OVER_THE_LIMIT = {
    "fields": ({f"f{i}": i for i in range(994)}, "1000"),
    "strings": ({f"s{i}": "x" for i in range(497)}, "1000"),
    "nested-fields": ({"o": {f"f{i}": i for i in range(993)}}, "1000"),
    "array-of-objects": ({"o": [{f"f{i}": i} for i in range(994)]}, "1000"),
    "depth": (nest(20), "depth"),
    "key": ({"k" * 257: 1}, "256"),
    "key-multibyte": ({"é" * 257: 1}, "256"),
    "empty-key": ({"": 1}, "empty"),
    "blank-key": ({" \t": 1}, "empty"),
    "nested-empty-key": ({"a": [{"": 1}]}, "empty"),
}


@pytest.mark.parametrize("name", list(AT_THE_LIMIT))
async def test_a_document_at_an_elasticsearch_limit_is_accepted(
    api_client: ApiHandle, name: str
) -> None:
    headers = await api_client.writer_headers()
    r = await api_client.client.put(f"{DOCS}/{name}", json=AT_THE_LIMIT[name], headers=headers)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("name", list(OVER_THE_LIMIT))
async def test_a_document_past_an_elasticsearch_limit_is_refused_with_422_naming_it(
    api_client: ApiHandle, name: str
) -> None:
    """POST and PUT: 422 problem whose detail names the limit; nothing is written."""
    headers = await api_client.writer_headers()
    body, named = OVER_THE_LIMIT[name]
    for method, url in (("POST", DOCS), ("PUT", f"{DOCS}/{name}")):
        r = await api_client.client.request(method, url, json=body, headers=headers)
        assert r.status_code == 422, (method, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert named in r.json()["detail"], r.json()["detail"]
    assert await api_client.outbox.count_documents({}) == 0


async def test_a_patch_that_would_pass_the_field_limit_is_refused_and_changes_nothing(
    api_client: ApiHandle,
) -> None:
    """Each merge patch is small; the merged document is what Elasticsearch would index."""
    headers = await api_client.writer_headers()
    first = {f"a{i}": i for i in range(600)}
    r = await api_client.client.put(f"{DOCS}/p", json=first, headers=headers)
    assert r.status_code == 201, r.text
    more = {f"b{i}": i for i in range(394)}
    r = await api_client.client.patch(f"{DOCS}/p", json=more, headers=headers)
    assert r.status_code == 422, r.text
    assert "1000" in r.json()["detail"]
    r = await api_client.client.get(f"{DOCS}/p")
    assert r.json()["version"] == 1
    assert await api_client.outbox.count_documents({}) == 1


async def test_the_number_of_collections_is_capped_with_a_clear_4xx(
    auth_service: AuthHandle,
) -> None:
    """With a cap of 3, a write to a 4th collection is refused with 409 naming the limit
    and nothing is written; writes to the existing three keep working."""
    base = auth_service.settings
    settings = base.model_copy(update={"api": ApiSettings(max_collections=3)})
    async with open_api(settings, auth_service) as api:
        headers = await api.writer_headers()
        for name in ("c1", "c2", "c3"):
            r = await api.client.post(f"/v1/collections/{name}/documents", json={}, headers=headers)
            assert r.status_code == 201, r.text
        r = await api.client.post("/v1/collections/c4/documents", json={}, headers=headers)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "3" in r.json()["detail"]
        assert "OUTBOX_API_MAX_COLLECTIONS" in r.json()["detail"]
        r = await api.client.put("/v1/collections/c4/documents/x", json={}, headers=headers)
        assert r.status_code == 409, r.text
        assert "c4" not in await api.db.list_collection_names()
        assert await api.outbox.count_documents({"collection": "c4"}) == 0
        for name in ("c1", "c2", "c3"):
            r = await api.client.put(
                f"/v1/collections/{name}/documents/again", json={"n": 1}, headers=headers
            )
            assert r.status_code == 201, r.text
