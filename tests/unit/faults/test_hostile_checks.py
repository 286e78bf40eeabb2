"""The hostile-writer scenario's checks: what the hostile mix expects against what is seen."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.hostile_writer import HostileExpectations
from faults.hostile import HostileObserved, bulks_over_cap, expected_index, judge, mismatches


def expectations() -> HostileExpectations:
    return HostileExpectations(
        clean={"books", "bulk"},
        poisoned={"conflicts": {"c1": 2, "c2": None}},
        parked={"books-v1"},
        dead_letters=Counter({"e1": 1, "e2": 1}),
        refused={"depth": 422, "key": 422},
    )


def observed() -> HostileObserved:
    """Everything as it must be."""
    return HostileObserved(
        mongo={
            "books": {"b0": (1, False), "b1": (2, True)},
            "bulk": {"big0": (1, False)},
            "conflicts": {"c1": (3, False), "c2": (1, False)},
        },
        index={
            "books": {"b0": (1, False), "b1": (2, True)},
            "bulk": {"big0": (1, False)},
            "conflicts": {"c1": (2, False)},
        },
        dead_letters=Counter({"e1": 1, "e2": 1}),
        parked={"books-v1"},
    )


def test_every_check_holding_passes_and_prints_the_counts() -> None:
    verdict = judge(expectations(), observed())
    assert verdict.ok
    assert verdict.summary() == (
        "hostile: dlq=2/2 repeated=0 unexpected=0 parked=books-v1 exact=3/3 bulks_over_cap=0/0"
    )


def test_a_poisoned_document_sits_at_its_newest_indexable_version_or_is_absent() -> None:
    mongo = {"c1": (3, False), "c2": (1, False), "c3": (1, True)}
    assert expected_index(mongo, {"c1": 2, "c2": None}) == {"c1": (2, False), "c3": (1, True)}
    assert mismatches(mongo, {"c1": (3, False), "c3": (1, True)}, {"c1": 2, "c2": None}) == ["c1"]


def test_a_clean_collection_behind_mongodb_fails_naming_the_document() -> None:
    seen = observed()
    seen.index["bulk"] = {}
    verdict = judge(expectations(), seen)
    assert not verdict.ok
    assert verdict.exact == 2
    assert verdict.mismatched == ("bulk/big0",)
    assert "exact=2/3 bulks_over_cap=0/0 mismatched=bulk/big0" in verdict.summary()


def test_a_poison_version_indexed_fails() -> None:
    seen = observed()
    seen.index["conflicts"]["c2"] = (1, False)
    assert judge(expectations(), seen).mismatched == ("conflicts/c2",)


def test_an_extra_document_in_the_index_fails() -> None:
    seen = observed()
    seen.index["books"]["squatter"] = (1, False)
    assert not judge(expectations(), seen).ok


def test_a_dead_letter_twice_missing_or_unexpected_fails() -> None:
    for letters, counts in [
        (Counter({"e1": 2, "e2": 1}), (1, 1, 0)),
        (Counter({"e1": 1}), (1, 0, 0)),
        (Counter({"e1": 1, "e2": 1, "load-event": 1}), (2, 0, 1)),
    ]:
        seen = observed()
        seen.dead_letters = letters
        verdict = judge(expectations(), seen)
        assert not verdict.ok, letters
        assert (verdict.dlq_once, verdict.dlq_repeated, verdict.dlq_unexpected) == counts


def test_the_squatter_not_parked_or_another_collection_parked_fails() -> None:
    for parked in [set(), {"books-v1", "novels"}]:
        seen = observed()
        seen.parked = parked
        verdict = judge(expectations(), seen)
        assert not verdict.ok, parked
        assert "expected parked=books-v1" in verdict.summary()


def test_an_over_limit_document_the_api_accepted_fails() -> None:
    expect = expectations()
    expect.refused["depth"] = 201
    verdict = judge(expect, observed())
    assert not verdict.ok
    assert verdict.refused_wrong == ("depth",)


def test_a_hostile_writer_that_failed_fails_with_its_error() -> None:
    verdict = judge(HostileExpectations(), HostileObserved(), error="AssertionError: boom")
    assert not verdict.ok
    assert verdict.summary() == "hostile: FAILED AssertionError: boom"


def test_a_bulk_over_the_byte_cap_fails() -> None:
    verdict = judge(expectations(), observed(), bulks=(40, 1))
    assert not verdict.ok
    assert "bulks_over_cap=1/40" in verdict.summary()


def metrics_text(cap: int, within: int, total: int) -> str:
    registry = CollectorRegistry()
    histogram = Histogram(
        "outbox_indexer_bulk_bytes", "bulk bytes", buckets=(65536.0, float(cap)), registry=registry
    )
    for _ in range(within):
        histogram.observe(cap - 1)
    for _ in range(total - within):
        histogram.observe(cap + 1)
    return generate_latest(registry).decode()


def test_bulks_over_the_cap_are_read_from_the_indexer_histogram() -> None:
    assert bulks_over_cap(metrics_text(262144, 7, 7), 262144) == (7, 0)
    assert bulks_over_cap(metrics_text(262144, 5, 7), 262144) == (7, 2)


def test_a_cap_that_is_no_bucket_bound_cannot_be_read() -> None:
    with pytest.raises(ValueError, match="not a bucket bound"):
        bulks_over_cap(metrics_text(262144, 1, 1), 300_000)
    with pytest.raises(ValueError, match="no outbox_indexer_bulk_bytes"):
        bulks_over_cap("", 262144)
