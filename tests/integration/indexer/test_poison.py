"""Poison events: the newest indexable version wins (delivery I1), and documents past
Elasticsearch's mapping limits go to the DLQ exactly once (security M3), even though the
stand-in Elasticsearch would index them."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from elasticsearch import AsyncElasticsearch

from infra.dead_letter import DeadLetter
from infra.envelope import headers_dict
from infra.settings import Settings
from tests.fixtures.indexer import (
    KafkaWriter,
    dead_letters,
    indexed_sources,
    make_record,
    start_indexer,
    with_mappings,
)


def _letters_by_event(settings: Settings, expected: int) -> Counter[tuple[str, str]]:
    """(document id, version) of every dead letter, counted."""
    counts: Counter[tuple[str, str]] = Counter()
    for message in dead_letters(settings, expected):
        headers = headers_dict(message.headers())
        letter = DeadLetter.from_kafka(key=message.key(), value=None, headers=message.headers())
        assert letter.stage == "indexer"
        counts[(message.key().decode(), headers.get("ce_aggregateversion", "?"))] += 1
    return counts


async def test_when_the_newest_version_in_a_batch_is_poison_the_newest_indexable_one_is_indexed(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """[v1, v2, v3 poison] in one batch: v2 is indexed (not silently marked stale) and v3
    is dead-lettered; [v1, v2 poison, v3 poison]: v1 is indexed, both poison versions are
    dead-lettered once each; a document whose only version is poison is dead-lettered."""
    settings = with_mappings(idx_settings, {"books": {"properties": {"price": {"type": "double"}}}})
    topic = await kafka_writer.ensure_topic("books")

    def rec(doc: str, version: int, price: Any) -> Any:
        return make_record("books", doc, version, payload={"title": doc, "price": price})

    await kafka_writer.send_records(
        [
            rec("d1", 1, 1.0),
            rec("d1", 2, 2.0),
            rec("d1", 3, "abc"),
            rec("d2", 1, "poison"),
            rec("d3", 1, 1.0),
            rec("d3", 2, "bad"),
            rec("d3", 3, "worse"),
        ]
    )
    indexer = start_indexer(settings)
    try:
        await indexer.caught_up([topic])
    finally:
        await indexer.stop()
    sources = await indexed_sources(es_client, settings.es.alias_for("books"))
    assert {k: (v["_version"], v["document"]["price"]) for k, v in sources.items()} == {
        "d1": (2, 2.0),
        "d3": (1, 1.0),
    }
    letters = await asyncio.to_thread(_letters_by_event, settings, 4)
    assert letters == {("d1", "3"): 1, ("d2", "1"): 1, ("d3", "2"): 1, ("d3", "3"): 1}


def nest(levels: int) -> dict[str, Any]:
    """A document whose objects nest `levels` deep (the document itself is level 1)."""
    doc: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


# Elasticsearch's defaults: 1000 fields per index (our envelope maps 7 of them: id,
# version, deleted, document, event_id, committed_at, indexed_at; each string maps a text
# field and its `.keyword`), depth 20 (the `document` object is one level), 10000 nested
# objects per document. Our own limit on a key: 256 bytes.
AT_THE_LIMITS: dict[str, dict[str, Any]] = {
    "fields": {f"f{i}": i for i in range(993)},
    "strings": {**{f"s{i}": "x" for i in range(496)}, "n": 1},
    "depth": nest(19),
    "key": {"k" * 256: 1},
}
OVER_THE_LIMITS: dict[str, dict[str, Any]] = {
    "fields": {f"f{i}": i for i in range(994)},
    "strings": {f"s{i}": "x" for i in range(497)},
    "depth": nest(20),
    "key": {"k" * 257: 1},
    "empty-key": {"": 1},
    "blank-key": {"  ": 1},
    "nested-empty-key": {"a": {"": 1}},
}


async def test_documents_past_elasticsearchs_limits_are_dead_lettered_once_and_at_them_indexed(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """Written straight to Kafka (no API in front): a document at each limit is indexed,
    one past it is dead-lettered exactly once, naming the limit."""
    settings = with_mappings(
        idx_settings, {"nested": {"properties": {"items": {"type": "nested"}}}}
    )
    records = [make_record("limits", f"at-{k}", 1, payload=v) for k, v in AT_THE_LIMITS.items()]
    records += [
        make_record("limits", f"over-{k}", 1, payload=v) for k, v in OVER_THE_LIMITS.items()
    ]
    records += [
        make_record("nested", "at", 1, payload={"items": [{"n": i} for i in range(10_000)]}),
        make_record("nested", "over", 1, payload={"items": [{"n": i} for i in range(10_001)]}),
    ]
    topics = [await kafka_writer.ensure_topic(c) for c in ("limits", "nested")]
    await kafka_writer.send_records(records)
    indexer = start_indexer(settings)
    try:
        await indexer.caught_up(topics)
    finally:
        await indexer.stop()
    assert set(await indexed_sources(es_client, settings.es.alias_for("limits"))) == {
        f"at-{k}" for k in AT_THE_LIMITS
    }
    assert set(await indexed_sources(es_client, settings.es.alias_for("nested"))) == {"at"}
    letters = await asyncio.to_thread(_letters_by_event, settings, len(OVER_THE_LIMITS) + 1)
    assert letters == {(f"over-{k}", "1"): 1 for k in OVER_THE_LIMITS} | {("over", "1"): 1}
    errors = {
        m.key().decode(): DeadLetter.from_kafka(key=None, value=None, headers=m.headers()).error
        for m in await asyncio.to_thread(dead_letters, settings, len(letters))
    }
    assert "1000" in errors["over-fields"]
    assert "1000" in errors["over-strings"]
    assert "depth" in errors["over-depth"]
    assert "256" in errors["over-key"]
    assert "empty" in errors["over-empty-key"]
    assert "10000" in errors["over"]
