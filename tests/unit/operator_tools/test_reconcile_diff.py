"""The reconcile merge: two id-sorted streams in, exactly the disagreeing ids out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operator_tools.reconcile import (
    DriftKind,
    Entry,
    UnsortedStreamError,
    classify,
    diff,
)


async def _stream(entries: Iterable[Entry]) -> AsyncIterator[Entry]:
    for e in entries:
        yield e


async def _diff(mongo: list[Entry], index: list[Entry]) -> list[tuple[str, DriftKind]]:
    return [(d.id, d.kind) async for d in diff(_stream(mongo), _stream(index))]


def live(i: str, v: int) -> Entry:
    return Entry(i, v, deleted=False)


def tomb(i: str, v: int) -> Entry:
    return Entry(i, v, deleted=True)


@pytest.mark.parametrize(
    ("mongo", "index", "expected"),
    [
        (live("a", 3), None, DriftKind.MISSING),
        (live("a", 3), live("a", 2), DriftKind.STALE),
        (live("a", 3), tomb("a", 2), DriftKind.STALE),
        (tomb("a", 3), tomb("a", 2), DriftKind.STALE),
        (tomb("a", 3), live("a", 2), DriftKind.EXTRA),
        (None, live("a", 1), DriftKind.EXTRA),
        (live("a", 3), live("a", 4), DriftKind.CONFLICT),
        (live("a", 3), tomb("a", 3), DriftKind.CONFLICT),
        (live("a", 3), live("a", 3), None),
        (tomb("a", 3), tomb("a", 3), None),
        (tomb("a", 3), None, None),  # purged tombstone: search shows nothing either way
        (None, tomb("a", 3), None),
    ],
)
def test_classify_follows_the_documented_table(
    mongo: Entry | None, index: Entry | None, expected: DriftKind | None
) -> None:
    """Each MongoDB/Elasticsearch combination gets the verdict the docs promise."""
    assert classify(mongo, index) == expected


async def test_diff_reports_missing_stale_and_extra_in_id_order() -> None:
    """A merge of the two sides finds each kind of drift and nothing else."""
    mongo = [live("a", 1), live("b", 2), live("c", 5), tomb("d", 2), live("f", 1)]
    index = [live("a", 1), live("c", 4), live("d", 1), live("e", 7), live("f", 1)]
    assert await _diff(mongo, index) == [
        ("b", DriftKind.MISSING),
        ("c", DriftKind.STALE),
        ("d", DriftKind.EXTRA),
        ("e", DriftKind.EXTRA),
    ]


async def test_diff_refuses_an_unsorted_side() -> None:
    """A side that is not sorted by id is an error, not a wrong report."""
    with pytest.raises(UnsortedStreamError):
        await _diff([live("b", 1), live("a", 1)], [])
    with pytest.raises(UnsortedStreamError):
        await _diff([], [live("a", 1), live("a", 1)])


_ids = st.text(alphabet="abcdeé😀Z0", min_size=1, max_size=4)
_side = st.dictionaries(_ids, st.tuples(st.integers(1, 5), st.booleans()), max_size=30)


@given(_side, _side)
async def test_diff_equals_a_per_id_comparison(
    mongo_side: dict[str, tuple[int, bool]], index_side: dict[str, tuple[int, bool]]
) -> None:
    """The streaming merge reports exactly what comparing every id one by one would."""
    mongo = [Entry(i, v, d) for i, (v, d) in sorted(mongo_side.items())]
    index = [Entry(i, v, d) for i, (v, d) in sorted(index_side.items())]
    by_id_m = {e.id: e for e in mongo}
    by_id_i = {e.id: e for e in index}
    expected = []
    for i in sorted(by_id_m.keys() | by_id_i.keys()):
        kind = classify(by_id_m.get(i), by_id_i.get(i))
        if kind is not None:
            expected.append((i, kind))
    assert await _diff(mongo, index) == expected
