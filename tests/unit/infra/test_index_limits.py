"""What a document maps in Elasticsearch, counted as its limits count it (no servers)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.validation import InvalidInputError, check_indexable
from infra.index_layout import index_mapping
from infra.index_limits import (
    ENVELOPE_FIELDS,
    IndexLimitError,
    IndexLimits,
    check_document_limits,
    index_limits,
    measure,
)
from infra.settings import ElasticSettings

DEFAULT = IndexLimits()


def test_the_envelope_count_is_what_the_mapping_declares() -> None:
    """7 top-level fields: if the layout grows one, the limit must know it."""
    assert len(index_mapping()["properties"]) == ENVELOPE_FIELDS


@pytest.mark.parametrize(
    ("document", "fields", "depth"),
    [
        ({}, 7, 2),
        ({"n": 1, "b": True, "f": 1.5}, 10, 2),
        ({"s": "text"}, 9, 2),  # text + .keyword
        ({"nothing": None, "empty": []}, 7, 2),  # null and [] map nothing
        ({"o": {}}, 8, 3),  # an empty object is an object mapping
        ({"o": {"a": 1, "b": "x"}}, 11, 3),
        ({"l": [1, 2, 3]}, 8, 2),  # elements share the path
        ({"l": [{"a": 1}, {"a": 2, "b": 3}]}, 10, 3),  # l, l.a, l.b
        ({"l": [[{"a": 1}]]}, 9, 3),  # arrays never add depth
        ({"a.b": 1}, 9, 3),  # a dotted key is an object per dot
        ({"mixed": [1, "x"]}, 9, 2),  # the widest mapping of the path counts
    ],
)
def test_fields_and_depth_are_counted_as_elasticsearch_maps_them(
    document: dict[str, Any], fields: int, depth: int
) -> None:
    shape = measure(document, DEFAULT)
    assert (shape.fields, shape.depth) == (fields, depth)


def test_one_field_past_the_limit_is_refused_naming_it() -> None:
    at = {f"f{i}": i for i in range(1000 - ENVELOPE_FIELDS)}
    check_document_limits(at, DEFAULT)
    with pytest.raises(IndexLimitError, match=r"1001 .*1000 \(index.mapping.total_fields.limit"):
        check_document_limits({**at, "one_more": 1}, DEFAULT)


def test_one_level_past_the_depth_limit_is_refused_naming_it() -> None:
    doc: dict[str, Any] = {"v": 1}
    for _ in range(18):
        doc = {"a": doc}
    check_document_limits(doc, DEFAULT)  # 19 levels + `document` = 20
    with pytest.raises(IndexLimitError, match=r"index\.mapping\.depth\.limit"):
        check_document_limits({"a": doc}, DEFAULT)


@pytest.mark.parametrize("key", ["", " ", "\t\n", ".", "a.", ".a", "a..b", "a. .b"])
def test_empty_blank_or_empty_segment_keys_are_refused(key: str) -> None:
    with pytest.raises(IndexLimitError, match="empty"):
        check_document_limits({"ok": {key: 1}}, DEFAULT)


def test_keys_are_limited_in_characters_whatever_their_encoding() -> None:
    """Characters, so the OpenAPI schema's `maxLength` states the limit exactly."""
    check_document_limits({"é" * 256: 1}, DEFAULT)
    with pytest.raises(IndexLimitError, match="257 characters long, over the limit of 256"):
        check_document_limits({"é" * 257: 1}, DEFAULT)


@pytest.mark.parametrize("key", ["", " ", "\t\n", "\u2003", "\u001f"])
def test_a_blank_key_is_refused_as_elasticsearch_judges_blank(key: str) -> None:
    with pytest.raises(IndexLimitError, match="empty or only whitespace"):
        check_document_limits({key: 1}, DEFAULT)


@pytest.mark.parametrize("key", ["\u00a0", "\u202f", "a b"])
def test_a_key_java_does_not_call_whitespace_is_kept(key: str) -> None:
    """Elasticsearch judges blank names with Java's Character.isWhitespace: a no-break
    space is a name, so refusing it would make the API stricter than its schema says."""
    check_document_limits({key: 1}, DEFAULT)


def test_an_override_counts_its_declared_fields_and_nested_objects() -> None:
    es = ElasticSettings(
        mappings={
            "c": {
                "dynamic": False,
                "properties": {
                    "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
                    "items": {"type": "nested", "properties": {"n": {"type": "long"}}},
                },
            }
        },
        nested_objects_limit=3,
    )
    limits = index_limits(es, "c")
    assert limits.nested_paths == frozenset({"items"})
    # Declared: title (2 with its multi-field), items, items.n; undeclared fields map nothing.
    shape = measure({"undeclared": {"x": "y"}, "items": [{"n": 1}, {"n": 2}]}, limits)
    assert (shape.fields, shape.nested_objects) == (ENVELOPE_FIELDS + 4, 2)
    with pytest.raises(IndexLimitError, match=r"4 nested objects, over the limit of 3"):
        check_document_limits({"items": [{"n": i} for i in range(4)]}, limits)
    assert index_limits(ElasticSettings(), "c").dynamic is True


def test_index_settings_make_elasticsearch_enforce_the_same_limits() -> None:
    limits = index_limits(ElasticSettings(total_fields_limit=2000, depth_limit=30), "c")
    assert limits.index_settings() == {
        "index.mapping.total_fields.limit": 2000,
        "index.mapping.depth.limit": 30,
        "index.mapping.nested_objects.limit": 10_000,
    }


def test_the_api_answers_a_limit_with_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        check_indexable({"": 1}, DEFAULT)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=3)
KEYS = st.text(alphabet="abc", min_size=1, max_size=2)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=15,
)


@given(st.dictionaries(KEYS, JSON, max_size=4))
def test_wrapping_values_in_arrays_or_repeating_them_never_changes_the_count(
    document: dict[str, Any],
) -> None:
    """Elasticsearch maps an array by its elements: `[v]`, `[v, v]` and `v` map the same."""
    shape = measure(document, DEFAULT)
    wrapped = {k: [v, [v]] for k, v in document.items()}
    assert measure(wrapped, DEFAULT) == shape


@given(st.dictionaries(KEYS, JSON, max_size=4), KEYS)
def test_moving_a_document_one_object_down_adds_one_field_and_one_level(
    document: dict[str, Any], key: str
) -> None:
    shape = measure(document, DEFAULT)
    moved = measure({key: document}, DEFAULT)
    assert (moved.fields, moved.depth) == (shape.fields + 1, shape.depth + 1)
