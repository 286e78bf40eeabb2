"""`outbox reindex` with collections named like other collections' indices (security H2)."""

from __future__ import annotations

from infra.index_layout import index_mapping
from operator_tools.reindex import reindex
from tests.fixtures.api import ApiHandle
from tests.fixtures.indexer import wait_until
from tests.fixtures.pipeline import Pipeline, open_pipeline, pipeline_settings


async def aliased(pipeline: Pipeline, collection: str) -> list[str]:
    alias = pipeline.settings.es.alias_for(collection)
    return sorted((await pipeline.es.indices.get_alias(name=alias)).body)


async def test_reindex_works_while_collections_named_like_its_indices_exist(
    pipeline: Pipeline,
) -> None:
    """`books-v1` and `books-v2` are collections of their own: reindexing `books` builds
    `books`'s next index, leaves theirs alone, and every collection still matches MongoDB."""
    for collection, count in (("books", 4), ("books-v1", 2), ("books-v2", 3)):
        for i in range(count):
            await pipeline.put(collection, f"{collection}-{i}", {"title": f"t{i}"})
    await pipeline.start_stages()
    for collection in ("books", "books-v1", "books-v2"):
        await pipeline.settled(collection)
    others = {c: await aliased(pipeline, c) for c in ("books-v1", "books-v2")}

    result = await reindex(pipeline.clients, "books")

    alias = pipeline.settings.es.alias_for("books")
    assert result.new_index == f"{alias}.v2"
    assert result.old_indices == [f"{alias}.v1"]
    assert await aliased(pipeline, "books") == [f"{alias}.v2"]
    for collection, indices in others.items():
        assert await aliased(pipeline, collection) == indices
    for collection in ("books", "books-v1", "books-v2"):
        await pipeline.settled(collection)
        assert set(await pipeline.es_state(collection)) == set(
            await pipeline.mongo_state(collection)
        )


async def test_reindex_frees_a_legacy_index_name_and_the_parked_collection_resumes(
    api_client: ApiHandle,
) -> None:
    """A deployment from before the `.v<N>` naming: `books` lives in `<alias>-v1`, which is
    `books-v1`'s alias name, so the indexer parks `books-v1`. `outbox reindex books` moves
    `books` to `<alias>.v2` and deletes the legacy index; `books-v1` then gets its own
    index on its next retry, and both collections match MongoDB."""
    base = pipeline_settings(api_client.settings)
    settings = base.model_copy(
        update={"indexer": base.indexer.model_copy(update={"parked_retry_max_seconds": 2.0})}
    )
    async with open_pipeline(api_client, settings) as pipeline:
        books = settings.es.alias_for("books")
        legacy = f"{books}-v1"
        await pipeline.es.indices.create(
            index=legacy, mappings=index_mapping(), aliases={books: {"is_write_index": True}}
        )
        for i in range(3):
            await pipeline.put("books", f"b{i}", {"title": f"t{i}"})
        await pipeline.put("books-v1", "squatter", {"title": "not a book"})
        await pipeline.start_stages()
        await pipeline.settled("books")
        assert pipeline.indexer is not None
        state = pipeline.indexer.state
        await wait_until(lambda: "books-v1" in state.parked, what="books-v1 parked")
        assert set(await pipeline.es_state("books")) == {"b0", "b1", "b2"}

        result = await reindex(pipeline.clients, "books")

        assert result.old_indices == [legacy]
        assert result.removed_old
        await wait_until(lambda: not state.parked, timeout_s=30, what="books-v1 released")
        await pipeline.settled("books-v1")
        await pipeline.settled("books")
        assert set(await pipeline.es_state("books")) == {"b0", "b1", "b2"}
        assert set(await pipeline.es_state("books-v1")) == {"squatter"}
        assert await aliased(pipeline, "books-v1") == [f"{legacy}.v1"]
