"""`outbox reindex` under concurrent writes, and a DLQ redrive after the cause is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import random

from elasticsearch import ApiError, TransportError

from infra.index_layout import LIVE_FILTER
from operator_tools.dlq_ops import list_entries
from operator_tools.reindex import reindex
from operator_tools.status import status
from tests.fixtures.api import ApiHandle
from tests.fixtures.indexer import wait_until
from tests.fixtures.pipeline import Pipeline, open_pipeline, pipeline_settings


async def test_reindex_under_concurrent_writes_keeps_search_answering_and_ends_equal_to_mongo(
    pipeline: Pipeline,
) -> None:
    """Writes continue during the rebuild; no search fails; afterwards ES equals MongoDB."""
    for i in range(150):
        await pipeline.put("books", f"b{i:03d}", {"title": f"t{i}", "n": i})
    await pipeline.start_stages()
    await pipeline.settled("books")
    alias = pipeline.settings.es.alias_for("books")
    first = sorted((await pipeline.es.indices.get_alias(name=alias)).body)

    stop = asyncio.Event()
    searches = {"ok": 0, "failed": 0, "empty": 0}
    writes = 0

    async def writer() -> None:
        nonlocal writes
        rng = random.Random(3)
        while not stop.is_set():
            doc_id = f"b{rng.randrange(170):03d}"
            if rng.random() < 0.15:
                r = await pipeline.api.client.delete(
                    f"/v1/collections/books/documents/{doc_id}", headers=pipeline.headers
                )
                assert r.status_code in (204, 404), r.text
            else:
                await pipeline.put("books", doc_id, {"title": f"w{writes}", "n": writes})
            writes += 1

    async def searcher() -> None:
        while not stop.is_set():
            try:
                r = await pipeline.es.search(index=alias, query=LIVE_FILTER, size=1)
            except (ApiError, TransportError):
                searches["failed"] += 1
            else:
                searches["ok"] += 1
                if r["hits"]["total"]["value"] == 0:
                    searches["empty"] += 1
            await asyncio.sleep(0)

    async def during_build() -> None:
        # Events the indexer applies to the old index after the copy read their documents:
        # exactly what the catch-up must carry over to the new index.
        assert pipeline.indexer is not None
        state = pipeline.indexer.state
        applied = state.events_applied
        await wait_until(
            lambda: state.events_applied >= applied + 20,
            timeout_s=20,
            what="events applied to the old index during the build",
        )

    tasks = [asyncio.create_task(writer()), asyncio.create_task(searcher())]
    try:
        result = await reindex(pipeline.clients, "books", before_swap=during_build)
        # Keep writing a little after the swap: those land in the new index directly.
        await wait_until(lambda: writes > 40, timeout_s=20, what="writes after the swap")
    finally:
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    assert result.old_indices == first
    assert result.removed_old
    assert sorted((await pipeline.es.indices.get_alias(name=alias)).body) == [result.new_index]
    assert not await pipeline.es.indices.exists(index=first[0])
    assert searches["failed"] == 0
    assert searches["empty"] == 0
    assert searches["ok"] > 0
    await pipeline.settled("books")
    cli = await pipeline.cli("reconcile", "--collection", "books", "--json")
    assert cli.code == 0, cli.stdout


async def test_reindex_with_keep_old_leaves_the_old_index(pipeline: Pipeline) -> None:
    """--keep-old swaps the alias but keeps the previous index for a rollback."""
    for i in range(5):
        await pipeline.put("books", f"b{i}", {"title": f"t{i}"})
    await pipeline.start_stages()
    await pipeline.settled("books")
    alias = pipeline.settings.es.alias_for("books")
    cli = await pipeline.cli("reindex", "books", "--keep-old", "--json")
    assert cli.code == 0, cli.stderr
    body = cli.json()
    assert body["new_index"] == f"{alias}.v2"
    assert body["copied"] == 5
    assert body["removed_old"] is False
    assert await pipeline.es.indices.exists(index=f"{alias}.v1")
    assert sorted((await pipeline.es.indices.get_alias(name=alias)).body) == [f"{alias}.v2"]
    assert await pipeline.es_state("books") == {f"b{i}": (1, False) for i in range(5)}


async def test_a_redriven_dlq_event_gets_indexed_once_the_cause_is_fixed(
    api_client: ApiHandle,
) -> None:
    """A strict mapping dead-letters an unknown field; after a mapping fix, redrive indexes it."""
    strict = {"books": {"dynamic": "strict", "properties": {"title": {"type": "text"}}}}
    settings = pipeline_settings(api_client.settings, mappings=strict)
    async with open_pipeline(api_client, settings) as pipeline:
        await pipeline.put("books", "ok", {"title": "fits"})
        await pipeline.put("books", "odd", {"title": "t", "colour": "red"})
        await pipeline.start_stages()

        async def dead_lettered() -> bool:
            return len(await list_entries(pipeline.clients)) == 1

        await wait_until(dead_lettered, timeout_s=30, what="the poison event in the DLQ")
        listed = await pipeline.cli("dlq", "list", "--json")
        assert listed.code == 1  # something waits in the DLQ
        (entry,) = listed.json()
        assert entry["document_id"] == "odd"
        assert "strict" in entry["error"]
        assert entry["redriven_at"] is None
        report = await status(pipeline.clients)
        assert report.dlq_pending == 1
        assert any("DLQ" in p for p in report.problems)

        # The fix: the mapping learns the field.
        alias = settings.es.alias_for("books")
        await pipeline.es.indices.put_mapping(
            index=alias, properties={"document": {"properties": {"colour": {"type": "keyword"}}}}
        )
        redriven = await pipeline.cli("dlq", "redrive", "--id", entry["id"], "--json")
        assert redriven.code == 0, redriven.stderr
        assert redriven.json()["redriven"] == [entry["id"]]

        await pipeline.settled("books")
        assert (await pipeline.es_state("books"))["odd"] == (1, False)
        (after,) = await list_entries(pipeline.clients)
        assert after.redriven_at is not None
        assert (await status(pipeline.clients)).dlq_pending == 0
