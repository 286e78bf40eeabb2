"""The audit's counting rules: lost, duplicated, misordered and drift."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.audit import KafkaEvent, compare_index, count_delivery, count_misordered


def _event(offset: int, version: int, *, key: str = "d1", partition: int = 0) -> KafkaEvent:
    return KafkaEvent("t", partition, offset, key, f"e-{key}-{version}-{offset}", version)


def test_an_outbox_record_missing_from_kafka_counts_as_lost() -> None:
    delivery = count_delivery(["a", "b", "c"], ["a", "c"])

    assert (delivery.lost, delivery.duplicated, delivery.unexpected) == (1, 0, 0)
    assert delivery.lost_examples == ("b",)


def test_each_extra_copy_of_an_event_counts_as_one_duplicate() -> None:
    delivery = count_delivery(["a", "b"], ["a", "a", "a", "b"])

    assert (delivery.lost, delivery.duplicated) == (0, 2)


def test_a_kafka_event_with_no_outbox_record_is_unexpected() -> None:
    assert count_delivery(["a"], ["a", "zzz"]).unexpected == 1


@given(st.lists(st.uuids().map(str), unique=True))
def test_exactly_once_delivery_in_any_order_is_clean(ids: list[str]) -> None:
    delivery = count_delivery(ids, reversed(ids))

    assert (delivery.lost, delivery.duplicated, delivery.unexpected) == (0, 0, 0)


def test_versions_growing_along_the_partition_are_in_order() -> None:
    assert count_misordered([_event(0, 1), _event(5, 2), _event(9, 4)]) == 0


def test_a_version_that_goes_back_or_repeats_is_misordered() -> None:
    assert count_misordered([_event(0, 1), _event(1, 3), _event(2, 2), _event(3, 2)]) == 2


def test_order_is_judged_by_offset_not_by_arrival() -> None:
    assert count_misordered([_event(7, 3), _event(1, 1), _event(4, 2)]) == 0


def test_one_document_on_two_partitions_is_misordered() -> None:
    assert count_misordered([_event(0, 1, partition=0), _event(0, 2, partition=1)]) == 1


def test_documents_are_ordered_independently() -> None:
    events = [_event(0, 5, key="a"), _event(1, 1, key="b"), _event(2, 6, key="a")]

    assert count_misordered(events) == 0


def test_drift_counts_missing_stale_and_extra_documents() -> None:
    mongo = {("c", "1"): (1, False), ("c", "2"): (3, True), ("c", "3"): (2, False)}
    es = {("c", "1"): (1, False), ("c", "2"): (3, False), ("c", "4"): (1, False)}

    drift = compare_index(mongo, es)

    assert (drift.missing, drift.stale, drift.extra) == (1, 1, 1)
    assert drift.total == 3


def test_an_index_equal_to_mongodb_has_no_drift() -> None:
    docs = {("c", "1"): (4, False), ("c", "2"): (2, True)}

    assert compare_index(docs, dict(docs)).total == 0
