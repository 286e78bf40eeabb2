"""Collection scopes, who owns which collection, retention decisions: the pure rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.ownership import overlaps, registrations, unowned
from outbox_relay.retention import decide_ttl
from outbox_relay.scope import ALL, NONE, CollectionScope

UNIVERSE = ["a", "b", "c", "d"]
scopes = st.builds(CollectionScope, st.frozensets(st.sampled_from(UNIVERSE)), st.booleans())


def members(scope: CollectionScope) -> set[str]:
    return {c for c in UNIVERSE if scope.contains(c)}


@given(x=scopes, y=scopes)
def test_scope_algebra_matches_set_algebra(x: CollectionScope, y: CollectionScope) -> None:
    """ "All but some" scopes combine exactly like the sets of collections they stand for."""
    assert members(x.minus(y)) == members(x) - members(y)
    assert members(x.intersect(y)) == members(x) & members(y)
    assert members(x.union(y)) == members(x) | members(y)


def test_a_relay_setting_is_a_scope_and_back() -> None:
    assert CollectionScope.of([]) == ALL
    assert CollectionScope.of(["b", "a"]).as_setting() == ["a", "b"]
    assert ALL.as_setting() == []
    with pytest.raises(ValueError, match="collection list"):
        ALL.minus(CollectionScope.of(["a"])).as_setting()
    assert NONE.is_empty


def lease(name: str, collections: list[str] | None) -> dict[str, object]:
    doc: dict[str, object] = {"_id": name, "position_time": datetime(2026, 1, 1)}
    if collections is not None:
        doc["collections"] = collections
    return doc


def test_a_collection_in_no_split_relays_list_is_unowned() -> None:
    regs = registrations([lease("r-books", ["books"]), lease("r-films", ["films"])])
    assert members(unowned(regs)) == {"a", "b", "c", "d"}  # none of the test universe
    assert unowned(regs).mongo_filter() == {"collection": {"$nin": ["books", "films"]}}
    assert regs[0].position_time == datetime(2026, 1, 1, tzinfo=UTC)


def test_a_relay_with_no_list_owns_everything_and_old_leases_register_nothing() -> None:
    assert unowned(registrations([lease("all", []), lease("r-a", ["a"])])).is_empty
    assert unowned(registrations([lease("old", None)])) == ALL


def test_two_relays_publishing_one_collection_are_reported() -> None:
    regs = registrations([lease("all", []), lease("r-a", ["a"]), lease("r-b", ["b"])])
    assert [(a, b, s.as_setting()) for a, b, s in overlaps(regs)] == [
        ("all", "r-a", ["a"]),
        ("all", "r-b", ["b"]),
    ]


def test_growing_the_ttl_is_always_allowed_shrinking_only_above_the_oldest_unpublished() -> None:
    day = 86400
    assert decide_ttl(wanted_s=7 * day, current_s=7 * day, oldest_unpublished_age_s=0, margin_s=120)
    assert not decide_ttl(
        wanted_s=7 * day, current_s=7 * day, oldest_unpublished_age_s=0, margin_s=120
    ).apply
    assert decide_ttl(
        wanted_s=8 * day, current_s=7 * day, oldest_unpublished_age_s=None, margin_s=120
    ).apply
    refused = decide_ttl(
        wanted_s=day, current_s=7 * day, oldest_unpublished_age_s=2 * day, margin_s=120
    )
    assert not refused.apply
    assert refused.refusal is not None
    assert "would delete it before it is published" in refused.refusal
    assert decide_ttl(wanted_s=day, current_s=7 * day, oldest_unpublished_age_s=60, margin_s=120)
    assert decide_ttl(
        wanted_s=day, current_s=7 * day, oldest_unpublished_age_s=60, margin_s=120
    ).apply
    assert not decide_ttl(
        wanted_s=day, current_s=None, oldest_unpublished_age_s=None, margin_s=120
    ).apply
