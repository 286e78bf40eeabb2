"""Replay selection: the MongoDB query and the in-memory rule select the same records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.envelope import EventType, OutboxRecord
from infra.settings import KafkaSettings
from operator_tools.reemitter import mark_replayed, replay_of
from operator_tools.replay import ReplayFilter, ReplayRequestError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record(collection: str = "books", doc: str = "a", minutes: int = 0) -> OutboxRecord:
    return OutboxRecord(
        event_id=f"e-{collection}-{doc}-{minutes}",
        collection=collection,
        document_id=doc,
        version=1,
        type=EventType.CREATED,
        payload={"x": 1},
        time=T0 + timedelta(minutes=minutes),
    )


def test_an_empty_filter_needs_all() -> None:
    """Replaying everything takes an explicit --all."""
    with pytest.raises(ReplayRequestError):
        ReplayFilter().validate()
    ReplayFilter(everything=True).validate()


def test_ids_need_a_collection_and_windows_must_be_ordered() -> None:
    """--id without --collection, a naive time and since >= until are refused."""
    with pytest.raises(ReplayRequestError):
        ReplayFilter(ids=("a",)).validate()
    with pytest.raises(ReplayRequestError):
        ReplayFilter(since=T0, until=T0).validate()
    with pytest.raises(ReplayRequestError):
        ReplayFilter(since=datetime(2026, 1, 1)).validate()


def test_mongo_query_spells_out_every_filter() -> None:
    """since is inclusive, until exclusive, ids match document ids of one collection."""
    f = ReplayFilter(collection="books", ids=("a", "b"), since=T0, until=T0 + timedelta(hours=1))
    assert f.mongo_query() == {
        "collection": "books",
        "document_id": {"$in": ["a", "b"]},
        "time": {"$gte": T0, "$lt": T0 + timedelta(hours=1)},
    }
    assert ReplayFilter(everything=True).mongo_query() == {}


@given(
    collection=st.sampled_from([None, "books", "films"]),
    ids=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2).map(tuple),
    since=st.none() | st.integers(0, 10),
    until=st.none() | st.integers(0, 10),
    rec=st.tuples(
        st.sampled_from(["books", "films"]), st.sampled_from(["a", "b", "c"]), st.integers(0, 10)
    ),
)
def test_matches_agrees_with_the_window_semantics(
    collection: str | None,
    ids: tuple[str, ...],
    since: int | None,
    until: int | None,
    rec: tuple[str, str, int],
) -> None:
    """`matches` selects a record exactly when every given filter admits it."""
    f = ReplayFilter(
        collection=collection,
        ids=ids,
        since=None if since is None else T0 + timedelta(minutes=since),
        until=None if until is None else T0 + timedelta(minutes=until),
        everything=True,
    )
    r = record(*rec)
    expected = (
        (collection is None or r.collection == collection)
        and (not ids or r.document_id in ids)
        and (since is None or rec[2] >= since)
        and (until is None or rec[2] < until)
    )
    assert f.matches(r) is expected


def test_a_replayed_event_keeps_its_id_and_is_marked() -> None:
    """Re-published events carry the original ce_id and Debezium id plus ce_replayed."""
    r = record()
    event = replay_of(r, KafkaSettings(namespace="ns"))
    headers = dict(event.headers)
    assert event.topic == "ns.event.books"
    assert event.key == b"a"
    assert headers["ce_id"] == headers["id"] == r.event_id.encode()
    assert headers["ce_replayed"] == b"true"
    assert OutboxRecord.from_kafka(key=event.key, value=event.value, headers=event.headers) == r


def test_mark_replayed_sets_the_header_once() -> None:
    """Re-driving a replayed event does not pile up ce_replayed headers."""
    headers = mark_replayed([("ce_id", b"x"), ("ce_replayed", b"true")])
    assert headers == [("ce_id", b"x"), ("ce_replayed", b"true")]
