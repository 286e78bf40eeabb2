"""`outbox status` names a collection the indexer parked, and why, until it is released."""

from __future__ import annotations

from operator_tools.status import status
from tests.fixtures.indexer import wait_until
from tests.fixtures.pipeline import Pipeline


async def test_status_names_a_parked_collection_and_why_until_it_is_released(
    pipeline: Pipeline,
) -> None:
    """A write block on `books`'s index parks `books`: `outbox status` shows one problem
    line naming it and the Elasticsearch error (exit 1, and in `--json`); once the block
    is lifted the events are indexed and the line goes away."""
    await pipeline.put("books", "b1", {"title": "one"})
    await pipeline.start_stages()
    await pipeline.settled("books")
    alias = pipeline.settings.es.alias_for("books")
    await pipeline.es.indices.put_settings(index=alias, settings={"index.blocks.write": True})
    await pipeline.put("books", "b2", {"title": "two"})

    async def parked_line() -> list[str]:
        return [p for p in (await status(pipeline.clients)).problems if "parked" in p]

    async def shown() -> bool:
        return bool(await parked_line())

    await wait_until(shown, timeout_s=30, interval_s=0.3, what="status to show books parked")
    (line,) = await parked_line()
    assert "'books'" in line
    assert "cluster_block_exception" in line
    cli = await pipeline.cli("status")
    assert cli.code == 1, cli.stderr
    assert "parked collection 'books'" in cli.stdout
    body = (await pipeline.cli("status", "--json")).json()
    (parked,) = body["indexer"]["parked"]
    assert (parked["collection"], parked["events"], parked["stale"]) == ("books", 1, False)

    await pipeline.es.indices.put_settings(index=alias, settings={"index.blocks.write": False})

    async def released() -> bool:
        return not await parked_line()

    await wait_until(released, timeout_s=60, interval_s=0.3, what="books released in status")
    await pipeline.settled("books")
