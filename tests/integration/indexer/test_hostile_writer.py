"""Issue 11's acceptance: a hostile writer never stops the indexer for anyone.

The API and the relay run in-process, the indexer as a real process (so "never restarted"
means the same pid, alive throughout). The write mix is `bench.hostile_writer`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson

from bench.hostile_writer import HostileWriter, hostile_writes
from infra.envelope import headers_dict
from operator_tools.reindex import reindex
from operator_tools.status import status
from tests.fixtures.api import ApiHandle
from tests.fixtures.indexer import (
    IndexerProcesses,
    dead_letters,
    dlq_size,
    readyz,
    wait_until,
)
from tests.fixtures.pipeline import Pipeline, open_pipeline, pipeline_settings


async def settled_except(
    pipeline: Pipeline, collection: str, poison: dict[str, int | None]
) -> None:
    """Elasticsearch holds every MongoDB document of `collection` at its version, except
    those whose newest version is poison: at their newest indexable version, or absent."""

    async def same() -> bool:
        mongo = await pipeline.mongo_state(collection)
        index = await pipeline.es_state(collection)
        expected = {i: v for i, v in mongo.items() if i not in poison}
        expected |= {i: (v, False) for i, v in poison.items() if v is not None and i in mongo}
        return expected == index

    await wait_until(same, timeout_s=30, interval_s=0.3, what=f"{collection} settled")


async def test_a_hostile_writer_never_stops_the_indexer_nor_costs_a_valid_write(
    api_client: ApiHandle, tmp_path: Path
) -> None:
    """After writes to `books`, `books-v1` (a legacy `-v1` index present), a mapping
    conflict, a document at each limit + 1 (API: 422; straight to Kafka: DLQ) and a batch
    over the byte cap: a new write to a third collection is searchable within 10 s, the
    indexer process never restarted, Elasticsearch matches MongoDB for every collection
    without poison (and holds everything but the poison where there is some), `books-v1`
    is parked and named until `outbox reindex books` frees its name, and every poison event
    is in the DLQ exactly once."""
    base = pipeline_settings(api_client.settings)
    settings = base.model_copy(
        update={
            "indexer": base.indexer.model_copy(
                update={"bulk_max_bytes": 512 * 1024, "parked_retry_max_seconds": 2.0}
            )
        }
    )
    processes = IndexerProcesses(settings, tmp_path)
    try:
        async with open_pipeline(api_client, settings) as pipeline:
            pipeline.start_relay()
            indexer, log_path = processes.start("indexer")
            await processes.healthy(indexer)
            pid = indexer.pid

            writer = HostileWriter(api_client.client, pipeline.headers, settings, pipeline.es)
            expect = await hostile_writes(writer, over_bytes=settings.indexer.bulk_max_bytes)
            assert expect.refused == dict.fromkeys(expect.refused, 422)

            r = await api_client.client.post(
                "/v1/collections/fresh/documents",
                json={"title": "after the storm"},
                headers=pipeline.headers,
            )
            assert r.status_code == 201, r.text
            fresh = r.json()["id"]

            async def searchable() -> bool:
                found = await api_client.client.get(
                    "/v1/collections/fresh/search", params={"q": "storm"}
                )
                return found.status_code == 200 and [h["id"] for h in found.json()["hits"]] == [
                    fresh
                ]

            await wait_until(searchable, timeout_s=10, what="the new write searchable in 10 s")

            for collection in expect.clean:
                await pipeline.settled(collection)
            for collection, poison in expect.poisoned.items():
                await settled_except(pipeline, collection, poison)

            (parked,) = expect.parked
            report = await status(pipeline.clients)
            assert any(f"parked collection {parked!r}" in p for p in report.problems)
            code, detail = await readyz(settings)
            assert (code, parked in detail) == (503, True)
            # Nothing of books-v1 reached any index (the name still is books's legacy index).
            assert not await pipeline.es.indices.exists_alias(name=settings.es.alias_for(parked))
            assert "squatter" not in await pipeline.es_state("books")

            await reindex(pipeline.clients, "books")
            await pipeline.settled(parked)
            await pipeline.settled("books")

            def alive() -> None:
                assert indexer.poll() is None, "the indexer process exited"

            async def consumed_everything() -> bool:
                # The operator's definition: commit markers of the relay's transactions
                # are not events waiting.
                alive()
                return (await status(pipeline.clients)).consumer_lag_total == 0

            await wait_until(consumed_everything, timeout_s=60, what="every event consumed")
            letters = await asyncio.to_thread(
                dead_letters, settings, sum(expect.dead_letters.values())
            )
            assert Counter(headers_dict(m.headers())["ce_id"] for m in letters) == (
                expect.dead_letters
            )
            assert await asyncio.to_thread(dlq_size, settings) == sum(expect.dead_letters.values())

            alive()
            assert indexer.pid == pid
            started = [
                line
                for line in log_path.read_bytes().splitlines()
                if line.startswith(b"{") and orjson.loads(line).get("event") == "indexer_started"
            ]
            assert len(started) == 1
    finally:
        processes.kill_all()
