"""Reindex naming and the atomic alias swap body."""

from __future__ import annotations

from operator_tools.reindex import next_index_name, swap_actions


def test_next_index_name_counts_past_every_existing_version() -> None:
    """The new index is one version above the highest one seen, never a reuse."""
    assert next_index_name("ns-books", []) == "ns-books-v1"
    assert next_index_name("ns-books", ["ns-books-v1"]) == "ns-books-v2"
    assert next_index_name("ns-books", ["ns-books-v3", "ns-books-v10"]) == "ns-books-v11"


def test_swap_moves_the_alias_in_one_request() -> None:
    """Every old index loses the alias and the new one gains it as write index, together."""
    assert swap_actions("a", ["a-v1", "a-v2"], "a-v3") == [
        {"remove": {"index": "a-v1", "alias": "a"}},
        {"remove": {"index": "a-v2", "alias": "a"}},
        {"add": {"index": "a-v3", "alias": "a", "is_write_index": True}},
    ]
