"""Input rules: names, ids, JSON bodies, limits and RFC 7396 merge patch (no servers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.validation import (
    COLLECTION_RE,
    DOCUMENT_ID_RE,
    BodyTooLargeError,
    InvalidInputError,
    MalformedJsonError,
    check_body_size,
    check_collection_name,
    check_document,
    check_document_id,
    merge_patch,
    parse_json_object,
    split_body_id,
)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=4), json_values, max_size=4)


def depth_of(value: Any) -> int:
    """Nesting depth as `check_document` counts it (scalars are 0, `{}` is 1)."""
    best = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            best = max(best, depth + 1)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            best = max(best, depth + 1)
            stack.extend((v, depth + 1) for v in item)
    return best


def nested(depth: int) -> dict[str, Any]:
    """An object whose nesting depth is exactly `depth` (the top level counts as 1)."""
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


@given(st.from_regex(COLLECTION_RE, fullmatch=True))
def test_every_name_matching_the_pattern_is_accepted(name: str) -> None:
    assert check_collection_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Books", "1books", "_books", "books.x", "bo oks", "b" * 65, "böoks", "books\n", "-x"],
)
def test_collection_names_outside_the_pattern_are_refused(name: str) -> None:
    with pytest.raises(InvalidInputError):
        check_collection_name(name)


def test_reserved_collection_names_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="reserved"):
        check_collection_name("outbox", reserved=frozenset({"outbox", "users"}))


@given(st.from_regex(DOCUMENT_ID_RE, fullmatch=True))
def test_every_id_matching_the_pattern_is_accepted(document_id: str) -> None:
    assert check_document_id(document_id) == document_id


@pytest.mark.parametrize("document_id", ["", ".x", "a/b", "a b", "x" * 201, 7, None, ["a"], "é"])
def test_bad_document_ids_are_refused(document_id: object) -> None:
    with pytest.raises(InvalidInputError):
        check_document_id(document_id)


@pytest.mark.parametrize(
    "body",
    [
        {"$set": 1},
        {"a.b": 1},
        {"a\x00b": 1},
        {"ok": {"deep": {"$where": "x"}}},
        {"ok": [{"x.y": 1}]},
        {"ok": [[{"nul\x00": 1}]]},
    ],
)
def test_keys_with_dollar_dot_or_nul_are_refused_at_any_depth(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        check_document(body, max_depth=32)


def test_dollar_and_dot_inside_values_and_key_middles_are_fine() -> None:
    check_document({"price$": "$5.00", "a$b": ["x.y", "$z"]}, max_depth=32)


def test_depth_32_is_accepted_and_33_refused() -> None:
    check_document(nested(32), max_depth=32)
    with pytest.raises(InvalidInputError, match="deeper than 32"):
        check_document(nested(33), max_depth=32)


def test_arrays_count_towards_depth() -> None:
    doc: Any = [1]
    for _ in range(31):
        doc = [doc]
    assert depth_of({"a": doc}) == 33
    with pytest.raises(InvalidInputError):
        check_document({"a": doc}, max_depth=32)


def test_a_very_deep_document_is_refused_without_recursion_error() -> None:
    doc: Any = {}
    for _ in range(50_000):
        doc = {"a": doc}
    with pytest.raises(InvalidInputError):
        check_document(doc, max_depth=32)


safe_keys = st.text(alphabet="abcxyz", max_size=3)
safe_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(safe_keys, children, max_size=3)
    ),
    max_leaves=15,
)


@given(st.dictionaries(safe_keys, safe_values, max_size=3), st.integers(1, 6))
def test_a_document_is_refused_exactly_when_it_nests_deeper_than_the_limit(
    doc: dict[str, Any], max_depth: int
) -> None:
    if depth_of(doc) > max_depth:
        with pytest.raises(InvalidInputError, match="nesting deeper"):
            check_document(doc, max_depth=max_depth)
    else:
        check_document(doc, max_depth=max_depth)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64 - 1])
def test_integers_outside_int64_are_refused(value: int) -> None:
    with pytest.raises(InvalidInputError, match="64 bits"):
        check_document({"n": [value]}, max_depth=32)


def test_int64_bounds_are_accepted() -> None:
    check_document({"lo": -(2**63), "hi": 2**63 - 1}, max_depth=32)


@pytest.mark.parametrize("raw", [b"", b"  ", b"{", b"{'a': 1}", b'{"a": NaN}', b"\xff\xfe"])
def test_invalid_json_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedJsonError):
        parse_json_object(raw, max_depth=32)


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b"1", b'"s"', b"null", b"true"])
def test_a_body_that_is_not_an_object_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidInputError, match="must be a JSON object"):
        parse_json_object(raw, max_depth=32)


def test_a_valid_object_parses() -> None:
    assert parse_json_object(b'{"a": [1, {"b": null}]}', max_depth=32) == {"a": [1, {"b": None}]}


def test_body_size_limit_is_inclusive() -> None:
    check_body_size(1024, 1024)
    with pytest.raises(BodyTooLargeError):
        check_body_size(1025, 1024)


def test_body_id_is_taken_out_of_the_document() -> None:
    assert split_body_id({"id": "a1", "x": 1}, path_id=None) == ("a1", {"x": 1})
    assert split_body_id({"x": 1}, path_id=None) == (None, {"x": 1})
    assert split_body_id({"id": "p", "x": 1}, path_id="p") == ("p", {"x": 1})
    assert split_body_id({"x": 1}, path_id="p") == ("p", {"x": 1})


@pytest.mark.parametrize("body", [{"id": "other"}, {"id": 5}, {"id": "bad id"}, {"id": None}])
def test_a_body_id_that_differs_from_the_path_or_is_bad_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        split_body_id(body, path_id="p")


# RFC 7396, Appendix A: (target, patch, result).
RFC7396_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7396_EXAMPLES)
def test_merge_patch_follows_rfc7396_examples(target: Any, patch: Any, result: Any) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == result
    assert json.dumps(target) == before, "the target must not be modified in place"


@given(json_objects, json_objects)
def test_merge_patch_is_idempotent(target: dict[str, Any], patch: dict[str, Any]) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(json_objects, json_objects)
def test_merge_patch_sets_every_non_null_patch_member(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    result = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    for key in target.keys() - patch.keys():
        assert result[key] == target[key]


@given(json_objects, json_objects)
def test_merge_patch_never_nests_deeper_than_its_inputs(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert depth_of(merge_patch(target, patch)) <= max(depth_of(target), depth_of(patch))


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 18446744073709551616}',
        b'{"n": -9223372036854775809}',
        b'{"a": {"b": [1, 2, 123456789012345678901234567890]}}',
        b'{"n": ' + b"9" * 5000 + b"}",
    ],
)
def test_integers_beyond_64_bits_are_refused_although_orjson_reads_them_as_floats(
    body: bytes,
) -> None:
    with pytest.raises(InvalidInputError, match="64 bits"):
        parse_json_object(body, max_depth=32)


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 9223372036854775807, "m": -9223372036854775808}',
        b'{"s": "18446744073709551616"}',
        b'{"k\\"": "x", "s": "\\"18446744073709551616"}',
        b'{"f": 1.18446744073709551616, "e": 1e19, "g": 18446744073709551616.0}',
    ],
)
def test_long_digit_runs_in_strings_fractions_or_floats_are_fine(body: bytes) -> None:
    parse_json_object(body, max_depth=32)


@given(st.integers() | st.integers(min_value=2**60, max_value=2**70).map(lambda n: -n))
def test_an_integer_is_accepted_exactly_when_it_fits_in_64_bits(n: int) -> None:
    raw = json.dumps({"s": str(n), "n": n, "f": n / 3}).encode()
    if -(2**63) <= n < 2**63:
        assert parse_json_object(raw, max_depth=64)["n"] == n
    else:
        with pytest.raises(InvalidInputError):
            parse_json_object(raw, max_depth=64)
