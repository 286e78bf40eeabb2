"""`outbox replay` and `outbox reconcile` against the running pipeline."""

from __future__ import annotations

import asyncio

from infra.envelope import CE_ID, CE_REPLAYED
from operator_tools.reconcile import reconcile
from operator_tools.replay import ReplayFilter, replay
from operator_tools.status import status
from tests.fixtures.indexer import wait_until
from tests.fixtures.pipeline import Pipeline
from tests.fixtures.relay import read_events


async def _history(pipeline: Pipeline, n: int = 12) -> None:
    """Creates, updates and a delete, so versions differ from 1."""
    for i in range(n):
        await pipeline.put("books", f"b{i:02d}", {"title": f"t{i}"})
    for i in range(0, n, 3):
        await pipeline.put("books", f"b{i:02d}", {"title": f"t{i} v2"})
    await pipeline.delete("books", "b01")
    await pipeline.put("films", "f1", {"title": "film"})


async def _indexer_idle(pipeline: Pipeline) -> None:
    async def idle() -> bool:
        r = await status(pipeline.clients)
        return r.backlog == 0 and r.consumer_lag_total == 0

    await wait_until(idle, timeout_s=30, interval_s=0.3, what="pipeline idle")


async def test_replay_of_a_collection_leaves_every_indexed_version_unchanged(
    pipeline: Pipeline,
) -> None:
    """Replayed events keep their ids, carry ce_replayed, and move no indexed version."""
    await _history(pipeline)
    await pipeline.start_stages()
    await pipeline.settled("books")
    await pipeline.settled("films")
    before = await pipeline.es_state("books")
    outbox_ids = {
        raw["_id"]
        async for raw in pipeline.api.db["outbox"].find({"collection": "books"}, {"_id": 1})
    }

    dry = await pipeline.cli("replay", "--collection", "books", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    assert dry.json()["matched"] == len(outbox_ids)
    assert dry.json()["published"] == 0

    result = await pipeline.cli("replay", "--collection", "books", "--rate", "1000", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["published"] == len(outbox_ids)
    assert result.json()["by_collection"] == {"books": len(outbox_ids)}

    messages = await read_events(pipeline.settings, ["books"])
    assert len(messages) == 2 * len(outbox_ids)
    replayed = [m for m in messages if m.header(CE_REPLAYED) == "true"]
    assert sorted(m.header(CE_ID) for m in replayed) == sorted(outbox_ids)

    await _indexer_idle(pipeline)
    assert await pipeline.es_state("books") == before
    # Nothing of the other collection was replayed.
    films = await read_events(pipeline.settings, ["films"])
    assert [m.header(CE_REPLAYED) for m in films] == [None]


async def test_an_interrupted_replay_can_be_run_again(pipeline: Pipeline) -> None:
    """Cancelling a throttled replay mid-way flushes what was sent; a re-run completes it."""
    await _history(pipeline)
    await pipeline.start_stages()
    await pipeline.settled("books")
    before = await pipeline.es_state("books")
    selection = ReplayFilter(collection="books")
    task = asyncio.create_task(replay(pipeline.clients, selection, rate=20))
    await asyncio.sleep(0.3)  # let it send a batch or two; any point of interruption will do
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    again = await replay(pipeline.clients, selection)
    assert again.published == again.matched > 0
    await _indexer_idle(pipeline)
    assert await pipeline.es_state("books") == before


async def test_reconcile_finds_documents_removed_behind_the_pipeline_and_repair_restores_them(
    pipeline: Pipeline,
) -> None:
    """Deleted-from-ES documents are missing (exit 1, right count); --repair brings them back."""
    await _history(pipeline)
    await pipeline.start_stages()
    await pipeline.settled("books")
    assert (await reconcile(pipeline.clients)).in_sync

    alias = pipeline.settings.es.alias_for("books")
    for doc_id in ("b00", "b04", "b07"):
        await pipeline.es.delete(index=alias, id=doc_id, refresh=True)
    # And one Elasticsearch has but MongoDB never had.
    await pipeline.es.index(
        index=alias,
        id="ghost",
        document={"id": "ghost", "version": 2, "deleted": False, "document": {"title": "boo"}},
        version=2,
        version_type="external",
        refresh=True,
    )

    found = await pipeline.cli("reconcile", "--collection", "books", "--json")
    assert found.code == 1, found.stderr
    books = found.json()["collections"][0]
    assert books["counts"] == {"missing": 3, "stale": 0, "extra": 1, "conflict": 0}
    assert {e["id"] for e in books["examples"]} == {"b00", "b04", "b07", "ghost"}

    human = await pipeline.cli("reconcile", "--collection", "books")
    assert human.code == 1
    assert "missing 3" in human.stdout

    repaired = await pipeline.cli("reconcile", "--collection", "books", "--repair", "--json")
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    assert repaired.json()["verified"] is True
    assert repaired.json()["collections"][0]["repair_events"] == 4

    again = await reconcile(pipeline.clients)
    assert again.drifted == 0
    state = await pipeline.es_state("books")
    mongo = await pipeline.mongo_state("books")
    assert {i: v for i, v in state.items() if not v[1]} == {
        i: v for i, v in mongo.items() if not v[1]
    }
    assert state["ghost"] == (3, True)  # a tombstone above the stray version
