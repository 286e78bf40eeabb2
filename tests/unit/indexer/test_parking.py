"""Parked collections: held events, backoff, hand-over on rebalance (no servers, no clock)."""

from __future__ import annotations

from indexer.batch import Event
from indexer.parking import ParkingLot
from tests.fixtures.indexer import event_for, make_record


def ev(doc: str, version: int, collection: str = "books", offset: int = 0) -> Event:
    return event_for(make_record(collection, doc, version), offset)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_parked_collection_is_retried_with_growing_capped_backoff() -> None:
    clock = Clock()
    lot = ParkingLot(max_retry_s=8.0, initial_retry_s=1.0, clock=clock, jitter=lambda: 1.0)
    assert lot.seconds_until_due() is None
    assert lot.park("books", "403 cluster_block_exception", [ev("a", 1)])
    assert not lot.park("books", "again", [ev("b", 1, offset=1)])
    assert "books" in lot
    waits = []
    for _ in range(6):
        waits.append(lot.seconds_until_due())
        clock.now += lot.seconds_until_due() or 0.0
        assert lot.due() == ["books"]
        lot.failed_again("books", "still blocked", lot.parked["books"].held())
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert lot.parked["books"].reason == "still blocked"
    assert lot.parked["books"].attempts == 6


def test_held_events_are_kept_once_per_position_in_offset_order() -> None:
    lot = ParkingLot(max_retry_s=30.0)
    first, second = ev("a", 2, offset=7), ev("a", 1, offset=3)
    lot.park("books", "x", [first])
    lot.hold([second, first])  # a redelivered copy of `first` is the same position
    held: list[Event] = lot.parked["books"].held()
    assert [e.message.offset for e in held] == [3, 7]
    lot.release("books")
    assert lot.parked == {}


def test_events_of_revoked_partitions_are_handed_over_and_an_empty_collection_released() -> None:
    lot = ParkingLot(max_retry_s=30.0)
    lot.park("books", "x", [ev("a", 1, offset=1)])
    lot.park("films", "y", [ev("f", 1, "films", offset=1)])
    released = lot.keep_partitions([("u.event.books", 0)])
    assert released == ["films"]
    assert list(lot.parked) == ["books"]
