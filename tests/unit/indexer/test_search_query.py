"""Search parameters → Elasticsearch query; tokens; the public hit shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.search_query import (
    FieldInfo,
    SearchParamError,
    SearchParams,
    build_search,
    decode_token,
    document_fields,
    encode_token,
    next_token,
    public_hits,
    sort_key,
)
from infra.index_layout import LIVE_FILTER, index_mapping

FIELDS = {
    "title": FieldInfo("text", keyword_subfield=True),
    "body": FieldInfo("text"),
    "price": FieldInfo("double"),
    "stock": FieldInfo("long"),
    "active": FieldInfo("boolean"),
    "sku": FieldInfo("keyword"),
    "author": FieldInfo("object"),
    "author.name": FieldInfo("text", keyword_subfield=True),
}


def filters_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body["query"]["bool"]["filter"])


def test_every_search_filters_out_tombstones() -> None:
    body = build_search(SearchParams(), FIELDS)
    assert filters_of(body) == [LIVE_FILTER]
    assert body["sort"] == [{"id": {"order": "asc"}}]
    assert body["size"] == 10
    assert body["track_total_hits"] == 10_000  # counted exactly up to a cap (api cost control)


def test_q_is_a_simple_query_string_over_text_fields_sorted_by_score() -> None:
    body = build_search(SearchParams(q="hello world"), FIELDS)
    (must,) = body["query"]["bool"]["must"]
    assert must["simple_query_string"]["query"] == "hello world"
    assert must["simple_query_string"]["fields"] == [
        "document.author.name",
        "document.body",
        "document.title",
    ]
    assert body["sort"][0] == {"_score": {"order": "desc"}}
    assert body["sort"][-1] == {"id": {"order": "asc"}}


@pytest.mark.parametrize(
    ("raw", "clause"),
    [
        ("title:Hello World", {"term": {"document.title.keyword": "Hello World"}}),
        ("body:some words", {"match_phrase": {"document.body": "some words"}}),
        ("price:3.5", {"term": {"document.price": 3.5}}),
        ("stock:7", {"term": {"document.stock": 7}}),
        ("active:true", {"term": {"document.active": True}}),
        ("sku:a:b", {"term": {"document.sku": "a:b"}}),
        ("author.name:Ann", {"term": {"document.author.name.keyword": "Ann"}}),
        ("never_seen:x", {"term": {"document.never_seen": "x"}}),
        ("_id:b1", {"term": {"id": "b1"}}),
        ("_version:3", {"term": {"version": 3}}),
    ],
)
def test_filters_are_exact_matches_by_field_type(raw: str, clause: dict[str, Any]) -> None:
    body = build_search(SearchParams(filters=(raw,)), FIELDS)
    assert filters_of(body) == [LIVE_FILTER, clause]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SearchParams(size=101), "size"),
        (SearchParams(size=0), "size"),
        (SearchParams(filters=("nocolon",)), "field:value"),
        (SearchParams(filters=(":x",)), "field:value"),
        (SearchParams(filters=("price:abc",)), "number"),
        (SearchParams(filters=("price:nan",)), "finite"),
        (SearchParams(filters=("active:yes",)), "boolean"),
        (SearchParams(filters=("_version:x",)), "integer"),
        (SearchParams(filters=("author:x",)), "object"),
        (SearchParams(filters=("bad field:x",)), "dot-separated"),
        (SearchParams(filters=("a*:x",)), "dot-separated"),
        (SearchParams(sort="body"), "full text"),
        (SearchParams(sort="-author"), "object"),
        (SearchParams(sort="x..y"), "dot-separated"),
        (SearchParams(q="x" * 1001), "longer"),
        (SearchParams(search_after="!!!"), "token"),
    ],
)
def test_malformed_parameters_are_rejected(params: SearchParams, message: str) -> None:
    with pytest.raises(SearchParamError, match=message):
        build_search(params, FIELDS)


def test_sort_uses_keyword_subfields_and_always_ends_with_the_id() -> None:
    body = build_search(SearchParams(sort="-title"), FIELDS)
    assert body["sort"] == [
        {
            "document.title.keyword": {
                "order": "desc",
                "missing": "_last",
                "unmapped_type": "keyword",
            }
        },
        {"id": {"order": "asc"}},
    ]
    assert build_search(SearchParams(sort="_version"), FIELDS)["sort"][0] == {
        "version": {"order": "asc"}
    }


def test_next_token_round_trips_and_is_tied_to_its_sort() -> None:
    token = encode_token("-price", [3.5, "b1"])
    assert decode_token(token, sort_key("-price")) == [3.5, "b1"]
    body = build_search(SearchParams(sort="-price", search_after=token), FIELDS)
    assert body["search_after"] == [3.5, "b1"]
    with pytest.raises(SearchParamError, match="different sort"):
        build_search(SearchParams(sort="price", search_after=token), FIELDS)


@given(st.text(max_size=200))
def test_any_garbage_token_is_a_param_error_never_a_crash(token: str) -> None:
    try:
        values = decode_token(token, "")
    except SearchParamError:
        return
    assert values
    assert all(v is None or isinstance(v, str | int | float) for v in values)


def test_next_is_only_offered_for_a_full_page() -> None:
    hits = [{"_id": "a", "sort": ["a"]}, {"_id": "b", "sort": ["b"]}]
    assert next_token(hits, size=3, sort=None) is None
    token = next_token(hits, size=2, sort=None)
    assert token is not None
    assert decode_token(token, "") == ["b"]


def test_public_hits_carry_id_version_score_document() -> None:
    hit = {"_id": "b1", "_score": 1.5, "_source": {"version": 4, "document": {"t": 1}}}
    assert public_hits([hit]) == [{"id": "b1", "version": 4, "score": 1.5, "document": {"t": 1}}]


def test_document_fields_flattens_the_index_mapping() -> None:
    mapping = index_mapping({"properties": {"price": {"type": "double"}}})
    mapping["properties"]["document"]["properties"]["author"] = {
        "properties": {"name": {"type": "text", "fields": {"keyword": {"type": "keyword"}}}}
    }
    fields = document_fields(mapping)
    assert fields["price"] == FieldInfo("double")
    assert fields["author"] == FieldInfo("object")
    assert fields["author.name"] == FieldInfo("text", keyword_subfield=True)
