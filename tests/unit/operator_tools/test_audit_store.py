"""The audit's SQLite working set: the joins that feed the counting rules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from operator_tools.audit_rules import State
from operator_tools.audit_store import AuditStore, MessageRow, RecordRow

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BOOKS = "ns.event.books"
FILMS = "ns.event.films"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    s = AuditStore(tmp_path / "audit.sqlite3")
    try:
        yield s
    finally:
        s.close()


def record(
    event_id: str, doc: str, version: int, *, topic: str = BOOKS, deleted: bool = False
) -> RecordRow:
    return RecordRow(
        event_id=event_id,
        topic=topic,
        collection=topic.rsplit(".", 1)[1],
        document_id=doc,
        version=version,
        deleted=deleted,
        content=None if deleted else f"c{version}",
        time=T0 + timedelta(seconds=version),
    )


def message(
    event_id: str,
    offset: int,
    *,
    topic: str = BOOKS,
    partition: int = 0,
    key: str = "d1",
    version: int = 1,
    replayed: bool = False,
    event_time: datetime = T0,
) -> MessageRow:
    return MessageRow(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=offset,
        key=key,
        event_id=event_id,
        version=version,
        replayed=replayed,
        event_time=event_time,
    )


def test_each_record_comes_with_its_copies_in_its_own_topic_only(store: AuditStore) -> None:
    store.add_records([record("e1", "d1", 1), record("e2", "d1", 2)])
    store.add_messages(
        [
            message("e1", 0),
            message("e1", 4, replayed=True),
            message("e1", 0, topic=FILMS),  # the same id in another collection's topic
        ]
    )

    events = {r.event_id: [(c.topic, c.offset, c.replayed) for c in cs] for r, cs in store.events()}

    assert events == {"e1": [(BOOKS, 0, False), (BOOKS, 4, True)], "e2": []}


def test_a_known_id_in_the_wrong_topic_is_an_unknown_message_there(store: AuditStore) -> None:
    store.add_records([record("e1", "d1", 1)])
    store.add_messages([message("e1", 0), message("e1", 3, topic=FILMS), message("", 5)])

    unknown = [(m.topic, m.offset) for m in store.unknown_messages()]

    assert unknown == [(BOOKS, 5), (FILMS, 3)]


def test_unknown_ids_page_through_while_late_records_are_added(store: AuditStore) -> None:
    store.add_messages([message(f"u{n:03d}", n) for n in range(25)])
    store.add_messages([message("replayed-one", 99, replayed=True)])
    store.add_messages([message("too-old", 98, event_time=T0 - timedelta(days=1))])

    seen: list[str] = []
    for page in store.unknown_event_ids(T0 - timedelta(hours=1), batch=10):
        seen += page
        store.add_records([record(i, "d1", 1) for i in page[:3]])  # found in MongoDB

    assert seen == [f"u{n:03d}" for n in range(25)]
    assert store.records() == 9


def test_order_streams_group_a_documents_messages_and_count_only_known_events(
    store: AuditStore,
) -> None:
    store.add_records([record("e1", "d1", 1)])
    store.add_messages(
        [
            message("e1", 0),
            message("stranger", 1),  # unknown, inside the window: a duplicate already
            message("ancient", 2, event_time=T0 - timedelta(days=30)),  # not judged
            message("e9", 0, key="d2"),
            message("", 3),
        ]
    )

    streams = {(t, k): {p.event_id: p.counted for p in ps} for t, k, ps in store.streams()}

    assert streams[(BOOKS, "d1")] == {
        "e1": True,
        "stranger": False,
        "ancient": False,
        "@0:3": False,
    }
    assert streams[(BOOKS, "d2")] == {"e9": False}


def test_newest_takes_each_documents_highest_version_with_index_and_acknowledgement(
    store: AuditStore,
) -> None:
    store.add_records(
        [
            record("a1", "d1", 1),
            record("a2", "d1", 2),
            record("b1", "d2", 1),
            record("c1", "d3", 1, deleted=True),
        ]
    )
    store.add_messages(
        [
            message("a1", 0),
            message("a2", 1),
            message("b1", 7, partition=1, key="d2"),
        ]
    )
    store.set_committed([(BOOKS, 0, 2), (BOOKS, 1, 7)])  # partition 1: offset 7 not yet done
    store.add_indexed("books", [("d1", State(2, False, "c2")), ("d9", State(1, False, "x"))])

    rows = {r.record.document_id: r for r in store.newest()}

    assert rows["d1"].record.version == 2
    assert (rows["d1"].in_kafka, rows["d1"].acknowledged) == (True, True)
    assert rows["d1"].index == State(2, False, "c2")
    assert (rows["d2"].in_kafka, rows["d2"].acknowledged, rows["d2"].index) == (True, False, None)
    assert (rows["d3"].in_kafka, rows["d3"].record.deleted) == (False, True)
    assert store.documents() == 3
    assert [(c, d) for c, d, _ in store.orphans()] == [("books", "d9")]


def test_not_indexed_pages_through_while_look_ups_are_added(store: AuditStore) -> None:
    store.add_records([record(f"e{n}", f"d{n:02d}", 1) for n in range(12)])
    store.add_indexed("books", [("d03", State(1, False, "c1"))])

    seen: list[str] = []
    for page in store.not_indexed("books", batch=5):
        seen += page
        store.add_indexed("books", [(page[0], State(1, False, "c1"))])

    assert seen == [f"d{n:02d}" for n in range(12) if n != 3]
    assert store.indexed() == 1 + 3


def test_asks_come_back_per_collection_in_bounded_batches(store: AuditStore) -> None:
    for n in range(7):
        store.add_ask("books", f"b{n}", State(n + 1, False, None))
    store.add_ask("films", "f0", State(1, True, None))

    batches = [(c, [d for d, _ in entries]) for c, entries in store.asks(batch=3)]

    assert batches == [
        ("books", ["b0", "b1", "b2"]),
        ("books", ["b3", "b4", "b5"]),
        ("books", ["b6"]),
        ("films", ["f0"]),
    ]


def test_the_temporary_store_leaves_nothing_behind() -> None:
    with AuditStore.temporary() as store:
        store.add_records([record("e1", "d1", 1)])
        path = Path(store._db.execute("PRAGMA database_list").fetchone()[2])
        assert path.exists()

    assert not path.parent.exists()
