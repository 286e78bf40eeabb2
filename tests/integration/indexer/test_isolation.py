"""One collection's index-level failure never stops the others (security H2, delivery I2/S4).

Each test runs a real indexer against the stand-in Kafka and Elasticsearch. Where the
stand-in is more lenient than Elasticsearch (it lets an alias take an index's name), the
test asserts that the indexer itself refuses what the real server would refuse.
"""

from __future__ import annotations

from elasticsearch import AsyncElasticsearch

from infra.index_layout import index_mapping
from infra.settings import Settings
from tests.fixtures.indexer import (
    KafkaWriter,
    dlq_size,
    indexed_sources,
    indexer_settings,
    make_record,
    metric_samples,
    readyz,
    start_indexer,
    wait_until,
    with_mappings,
)


async def _indexed(
    es: AsyncElasticsearch, settings: Settings, collection: str, doc_id: str
) -> bool:
    return doc_id in await indexed_sources(es, settings.es.alias_for(collection))


async def test_a_collection_whose_alias_is_a_legacy_index_is_parked_and_never_mixes_documents(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """A deployment from before the `.v<N>` naming has `<alias>-v1` indices. A writer's
    collection `books-v1` has `books`'s concrete index as its alias name: Elasticsearch
    refuses that alias (the stand-in accepts it and mixes the documents). The indexer
    checks before it creates an alias, parks `books-v1` (readiness, metric), keeps
    indexing `books` and `authors`, and never exits."""
    settings = idx_settings
    books_alias = settings.es.alias_for("books")
    legacy = f"{books_alias}-v1"
    assert legacy == settings.es.alias_for("books-v1")
    await es_client.indices.create(
        index=legacy, mappings=index_mapping(), aliases={books_alias: {"is_write_index": True}}
    )
    await kafka_writer.ensure_topic("books-v1")
    await kafka_writer.ensure_topic("authors")
    indexer = start_indexer(settings)
    try:
        await kafka_writer.send_records([make_record("books", "b1", 1)])
        await kafka_writer.send_records([make_record("books-v1", "squatter", 1)])
        await kafka_writer.send_records([make_record("authors", "a1", 1)])
        await wait_until(
            lambda: _indexed(es_client, settings, "authors", "a1"),
            timeout_s=20,
            what="authors/a1 indexed while books-v1 is parked",
        )
        await wait_until(
            lambda: "books-v1" in indexer.state.parked, timeout_s=20, what="books-v1 parked"
        )
        await kafka_writer.send_records([make_record("books", "b2", 1)])
        await wait_until(
            lambda: _indexed(es_client, settings, "books", "b2"),
            timeout_s=20,
            what="books/b2 indexed while books-v1 is parked",
        )
        assert set(await indexed_sources(es_client, books_alias)) == {"b1", "b2"}
        assert not await es_client.indices.exists_alias(name=legacy)
        status, detail = await readyz(settings)
        assert status == 503
        assert "books-v1" in detail
        samples = await metric_samples(settings)
        assert samples[("outbox_indexer_parked_collections", ())] == 1
        assert dlq_size(settings) == 0
        assert not indexer.task.done()
    finally:
        await indexer.stop()


async def test_collections_named_like_another_collections_index_keep_their_own_documents(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """`books-v1` written first, then `books`, then `books-v2`: each alias holds exactly
    its own collection's documents, and nothing is parked."""
    settings = idx_settings
    for collection in ("books-v1", "books", "books-v2"):
        await kafka_writer.ensure_topic(collection)
    indexer = start_indexer(settings)
    try:
        for collection in ("books-v1", "books", "books-v2"):
            await kafka_writer.send_records([make_record(collection, f"{collection}-doc", 1)])
            await wait_until(
                lambda c=collection: _indexed(es_client, settings, c, f"{c}-doc"),
                timeout_s=20,
                what=f"{collection} indexed",
            )
        for collection in ("books-v1", "books", "books-v2"):
            assert set(await indexed_sources(es_client, settings.es.alias_for(collection))) == {
                f"{collection}-doc"
            }
        assert indexer.state.parked == {}
    finally:
        await indexer.stop()


async def test_a_write_block_parks_the_collection_instead_of_dead_lettering_its_events(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """`index.blocks.write` (shrink, clone, or an operator) answers each item with a 403
    `cluster_block_exception`: routine maintenance, not poison. The collection is parked,
    nothing goes to the DLQ, other collections keep indexing, and once the block is lifted
    the parked events are indexed."""
    settings = idx_settings
    await kafka_writer.ensure_topic("books")
    await kafka_writer.ensure_topic("authors")
    indexer = start_indexer(settings)
    try:
        await kafka_writer.send_records([make_record("books", "b1", 1)])
        await wait_until(lambda: _indexed(es_client, settings, "books", "b1"), what="b1")
        alias = settings.es.alias_for("books")
        await es_client.indices.put_settings(index=alias, settings={"index.blocks.write": True})
        await kafka_writer.send_records([make_record("books", "b2", 1)])
        await kafka_writer.send_records([make_record("authors", "a1", 1)])
        await wait_until(lambda: _indexed(es_client, settings, "authors", "a1"), what="a1")
        await wait_until(lambda: "books" in indexer.state.parked, timeout_s=20, what="books parked")
        status, detail = await readyz(settings)
        assert (status, "books" in detail) == (503, True)

        await es_client.indices.put_settings(index=alias, settings={"index.blocks.write": False})
        await wait_until(
            lambda: _indexed(es_client, settings, "books", "b2"),
            timeout_s=30,
            what="b2 indexed once the block is lifted",
        )
        await wait_until(lambda: indexer.state.parked == {}, what="books unparked")
        await wait_until(lambda: _ready(settings), timeout_s=20, what="readiness green again")
        assert dlq_size(settings) == 0
        assert indexer.state.events_dead_lettered == 0
    finally:
        await indexer.stop()


async def _ready(settings: Settings) -> bool:
    return (await readyz(settings))[0] == 200


async def test_an_index_elasticsearch_refuses_to_create_parks_that_collection_only(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """A bad mapping override for `films` (Elasticsearch answers 400 to the index
    creation) parks `films`; `books` in the same batches is indexed, the process stays up."""
    bad = {"films": {"properties": {"year": {"type": "no_such_type"}}}}
    settings = with_mappings(idx_settings, bad)
    await kafka_writer.ensure_topic("films")
    await kafka_writer.ensure_topic("books")
    await kafka_writer.send_records(
        [make_record("films", f"f{i}", 1) for i in range(3)]
        + [make_record("books", f"b{i}", 1) for i in range(3)]
    )
    indexer = start_indexer(settings)
    try:
        await wait_until(
            lambda: _indexed(es_client, settings, "books", "b2"), timeout_s=20, what="books"
        )
        await wait_until(lambda: "films" in indexer.state.parked, what="films parked")
        assert "no_such_type" in indexer.state.parked["films"].reason
        assert not indexer.task.done()
        assert dlq_size(settings) == 0
    finally:
        await indexer.stop()


async def test_an_index_deleted_under_the_indexer_is_recreated_behind_its_alias(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """The concrete index removed while the indexer runs (an operator's mistake): the next
    event's 404 makes the indexer create the index and alias again, with the mapping, and
    retry; never a concrete index named like the alias (Elasticsearch's auto-create)."""
    settings = idx_settings
    alias = settings.es.alias_for("books")
    await kafka_writer.ensure_topic("books")
    indexer = start_indexer(settings)
    try:
        await kafka_writer.send_records([make_record("books", "b1", 1)])
        await wait_until(lambda: _indexed(es_client, settings, "books", "b1"), what="b1")
        behind = list((await es_client.indices.get_alias(name=alias)).body)
        await es_client.indices.delete(index=",".join(behind))
        await kafka_writer.send_records([make_record("books", "b2", 1)])
        await wait_until(
            lambda: _indexed(es_client, settings, "books", "b2"), timeout_s=20, what="b2"
        )
        assert await es_client.indices.exists_alias(name=alias)
        mapping = (await es_client.indices.get_mapping(index=alias)).body
        (properties,) = (m["mappings"]["properties"] for m in mapping.values())
        assert properties["deleted"] == {"type": "boolean"}
    finally:
        await indexer.stop()


async def test_bulks_are_capped_by_bytes_and_every_event_is_indexed(
    idx_settings: Settings, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """One batch of 40 events of ~8 KiB with a 64 KiB cap goes out as several bulk
    requests, none larger than the cap (Elasticsearch refuses requests over its
    `http.max_content_length` with 413; the stand-in does not, so the cap is ours)."""
    settings = indexer_settings(idx_settings, bulk_max_bytes=64 * 1024, batch_max_events=500)
    topic = await kafka_writer.ensure_topic("books")
    await kafka_writer.send_records(
        make_record("books", f"big{i}", 1, payload={"text": f"{i} " + "x" * 8000})
        for i in range(40)
    )
    indexer = start_indexer(settings)
    try:
        await indexer.caught_up([topic])
        assert len(await indexed_sources(es_client, settings.es.alias_for("books"))) == 40
        samples = await metric_samples(settings)
        requests = samples[("outbox_indexer_bulk_bytes_count", ())]
        assert requests >= 5
        assert samples[("outbox_indexer_bulk_bytes_bucket", (("le", "65536.0"),))] == requests
    finally:
        await indexer.stop()
