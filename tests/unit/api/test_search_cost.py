"""Search cost controls, as the query builder applies them (no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from api.search_query import (
    MAX_PREFIX_TERMS,
    SearchParams,
    build_search,
    limit_prefixes,
)
from infra.index_layout import DOCUMENT_FIELD

FIELDS: dict[str, Any] = {}


def _text_query(q: str) -> dict[str, Any]:
    body = build_search(SearchParams(q=q), FIELDS)
    query: dict[str, Any] = body["query"]["bool"]["must"][0]["simple_query_string"]
    return query


def test_elasticsearch_stops_a_search_at_the_timeout_and_counts_hits_up_to_a_cap() -> None:
    body = build_search(SearchParams(timeout_ms=1500, max_total=500), FIELDS)
    assert body["timeout"] == "1500ms"
    assert body["track_total_hits"] == 500


def test_fuzzy_and_slop_operators_are_off() -> None:
    query = _text_query('dune~2 "a phrase"~3 kept\\~')
    flags = set(query["flags"].split("|"))
    assert flags == {"AND", "OR", "NOT", "PHRASE", "PRECEDENCE", "WHITESPACE", "ESCAPE", "PREFIX"}
    assert not flags & {"FUZZY", "SLOP", "NEAR", "ALL"}
    # Also out of the text: a server that ignores `flags` must not run them either.
    assert query["query"] == 'dune 2 "a phrase" 3 kept\\~'


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("a*", "a\\*"),
        ("du*", "du\\*"),
        ("dun*", "dun*"),
        ('"a phrase"*', '"a phrase"\\*'),
        ("(abc* | x*)", "(abc* | x\\*)"),
        ("escaped\\* abc*", "escaped\\* abc*"),
    ],
)
def test_a_prefix_needs_three_characters_before_its_star(q: str, expected: str) -> None:
    assert limit_prefixes(q) == expected
    assert _text_query(q)["query"] == expected


def test_only_the_first_prefix_terms_expand() -> None:
    q = " ".join(f"term{i}*" for i in range(MAX_PREFIX_TERMS + 2))
    limited = limit_prefixes(q)
    assert limited.count("\\*") == 2
    assert limited.count("*") == MAX_PREFIX_TERMS + 2


def test_a_query_over_no_known_text_field_still_searches_document_fields() -> None:
    assert _text_query("x")["fields"] == [f"{DOCUMENT_FIELD}.*"]
