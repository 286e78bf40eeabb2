"""The atomic alias swap body of a reindex."""

from __future__ import annotations

from operator_tools.reindex import swap_actions


def test_swap_moves_the_alias_in_one_request() -> None:
    """Every old index loses the alias and the new one gains it as write index, together."""
    assert swap_actions("a", ["a-v1", "a-v2"], "a-v3") == [
        {"remove": {"index": "a-v1", "alias": "a"}},
        {"remove": {"index": "a-v2", "alias": "a"}},
        {"add": {"index": "a-v3", "alias": "a", "is_write_index": True}},
    ]
