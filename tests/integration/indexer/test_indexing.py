"""The indexer against real Kafka and Elasticsearch (the embedded stand-ins)."""

from __future__ import annotations

import asyncio

from elasticsearch import AsyncElasticsearch

from infra.dead_letter import DeadLetter
from infra.envelope import EventType
from infra.settings import Settings
from tests.fixtures.indexer import (
    KafkaWriter,
    RunningIndexer,
    indexed_sources,
    make_record,
    read_all,
    read_at,
    start_indexer,
    wait_until,
)


async def test_fifty_writes_become_searchable_and_replace_and_delete_are_reflected(
    running_indexer: RunningIndexer, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """50 creates are indexed within seconds; a replace moves the version, a delete
    leaves a tombstone that search filters out."""
    settings = running_indexer.settings
    alias = settings.es.alias_for("books")
    await kafka_writer.send_records(make_record("books", f"b{i:02d}", 1) for i in range(50))

    async def all_indexed() -> bool:
        return len(await indexed_sources(es_client, alias)) == 50

    await wait_until(all_indexed, timeout_s=15, what="50 documents indexed")

    await kafka_writer.send_records(
        [make_record("books", f"b{i:02d}", 2, payload={"title": "replaced"}) for i in range(5)]
        + [make_record("books", f"b{i:02d}", 2, EventType.DELETED) for i in range(5, 10)]
    )
    topic = settings.kafka.event_topic("books")
    await running_indexer.caught_up([topic])
    sources = await indexed_sources(es_client, alias)
    for i in range(5):
        doc = sources[f"b{i:02d}"]
        assert (doc["_version"], doc["version"], doc["deleted"]) == (2, 2, False)
        assert doc["document"] == {"title": "replaced"}
    for i in range(5, 10):
        doc = sources[f"b{i:02d}"]
        assert (doc["_version"], doc["deleted"], doc["document"]) == (2, True, None)
    live = await indexed_sources(es_client, alias, include_tombstones=False)
    assert len(live) == 45


async def test_redelivering_a_whole_topic_reversed_with_duplicates_changes_nothing(
    running_indexer: RunningIndexer, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """Replay in reverse order plus duplicates: no version moves, no deleted document returns,
    not a single source is rewritten (indexed_at stays as it was)."""
    settings = running_indexer.settings
    alias = settings.es.alias_for("books")
    topic = settings.kafka.event_topic("books")
    history = []
    for d in range(30):
        history.append(make_record("books", f"d{d}", 1))
        history.append(make_record("books", f"d{d}", 2))
        if d % 3 == 0:
            history.append(make_record("books", f"d{d}", 3, EventType.DELETED))
        if d % 6 == 0:
            history.append(make_record("books", f"d{d}", 4))  # re-created after the delete
    await kafka_writer.send_records(history)
    await running_indexer.caught_up([topic])
    before = await indexed_sources(es_client, alias)
    applied_before = running_indexer.state.events_applied
    expected = {
        f"d{d}": (4, False) if d % 6 == 0 else (3, True) if d % 3 == 0 else (2, False)
        for d in range(30)
    }
    assert {k: (v["_version"], v["deleted"]) for k, v in before.items()} == expected

    replay = list(reversed(history)) + history[::7] + [r for r in history if r.version == 1]
    await kafka_writer.send_records(replay)
    await running_indexer.caught_up([topic])

    assert await indexed_sources(es_client, alias) == before
    assert running_indexer.state.events_applied == applied_before
    assert running_indexer.state.events_already_applied >= len(replay) - 30


async def test_poison_events_go_to_the_dlq_and_the_next_good_event_is_indexed(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """Undecodable, header-less and mapping-conflicting events are dead-lettered with their
    key, value, headers and source position; the indexer moves on."""
    es_section = idx_settings.es.model_copy(
        update={"mappings": {"books": {"properties": {"price": {"type": "double"}}}}}
    )
    settings = idx_settings.model_copy(update={"es": es_section})
    topic = await kafka_writer.ensure_topic("books")
    good = make_record("books", "good", 1, payload={"title": "fine", "price": 3.5})
    conflict = make_record("books", "conflict", 1, payload={"title": "t", "price": "abc"})
    bad_json = make_record("books", "badjson", 1)
    poison_raw = [
        (topic, b"noheaders", b"{}", []),
        (topic, b"badjson", b"{not json", bad_json.kafka_headers()),
    ]
    indexer = start_indexer(settings)
    try:
        await kafka_writer.send_raw(poison_raw)
        await kafka_writer.send_records([conflict])
        await kafka_writer.send_records([good])
        await indexer.caught_up([topic])
    finally:
        await indexer.stop()

    sources = await indexed_sources(es_client, settings.es.alias_for("books"))
    assert set(sources) == {"good"}
    assert indexer.state.events_dead_lettered == 3

    letters = await asyncio.to_thread(read_all, settings, settings.kafka.dlq_topic, 3)
    by_key = {m.key(): m for m in letters}
    assert set(by_key) == {b"noheaders", b"badjson", b"conflict"}
    for key, message in by_key.items():
        letter = DeadLetter.from_kafka(
            key=message.key(), value=message.value(), headers=message.headers()
        )
        assert letter.stage == "indexer"
        assert letter.source_topic == topic
        source = await asyncio.to_thread(
            read_at, settings, topic, letter.source_partition, letter.source_offset
        )
        assert (source.key(), source.value()) == (key, message.value())
        assert letter.original_headers == [(k, v or b"") for k, v in source.headers() or []]
    assert "ce_id" in dict(
        DeadLetter.from_kafka(
            key=b"", value=None, headers=by_key[b"conflict"].headers()
        ).original_headers
    )
    errors = {
        k: DeadLetter.from_kafka(key=k, value=None, headers=m.headers()).error
        for k, m in by_key.items()
    }
    assert "missing header" in errors[b"noheaders"]
    assert "not JSON" in errors[b"badjson"]
    assert "price" in errors[b"conflict"]


async def test_a_restarted_indexer_resumes_from_committed_offsets(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """Stop, write more, start again: everything is indexed and nothing already committed
    is consumed a second time."""
    topic = await kafka_writer.ensure_topic("books")
    alias = idx_settings.es.alias_for("books")
    first = start_indexer(idx_settings)
    try:
        await kafka_writer.send_records(make_record("books", f"a{i}", 1) for i in range(30))
        await first.caught_up([topic])
    finally:
        await first.stop()

    await kafka_writer.send_records(
        [make_record("books", f"b{i}", 1) for i in range(25)]
        + [make_record("books", f"a{i}", 2) for i in range(5)]
    )
    second = start_indexer(idx_settings)
    try:
        await second.caught_up([topic])
    finally:
        await second.stop()
    sources = await indexed_sources(es_client, alias)
    assert len(sources) == 55
    assert all(sources[f"a{i}"]["_version"] == 2 for i in range(5))
    assert second.state.events_consumed == 30


async def test_a_new_collection_is_picked_up_without_a_restart(
    running_indexer: RunningIndexer, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """The pattern subscription sees a topic created after the indexer started."""
    settings = running_indexer.settings
    await kafka_writer.send_records([make_record("books", "b1", 1)])
    await running_indexer.caught_up([settings.kafka.event_topic("books")])
    await kafka_writer.send_records([make_record("authors", "a1", 1)])
    await running_indexer.caught_up([settings.kafka.event_topic("authors")], timeout_s=30)
    sources = await indexed_sources(es_client, settings.es.alias_for("authors"))
    assert sources["a1"]["version"] == 1
