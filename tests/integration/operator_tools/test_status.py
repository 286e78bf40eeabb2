"""`outbox status` against the running pipeline."""

from __future__ import annotations

from operator_tools.status import status
from tests.fixtures.indexer import wait_until
from tests.fixtures.pipeline import Pipeline


async def test_status_shows_a_backlog_while_the_relay_is_stopped_and_none_after_catch_up(
    pipeline: Pipeline,
) -> None:
    """Records written with no relay running are backlog; once it catches up, backlog is 0."""
    for i in range(5):
        await pipeline.put("books", f"b{i}", {"title": f"t{i}"})

    report = await status(pipeline.clients)
    assert report.backlog == 5
    assert any("no active relay" in p for p in report.problems)

    cli = await pipeline.cli("status", "--json")
    assert cli.code == 1, cli.stderr
    assert cli.json()["relay"]["backlog"] == 5
    assert cli.json()["ok"] is False

    await pipeline.start_stages()

    async def caught_up() -> bool:
        r = await status(pipeline.clients)
        return r.backlog == 0 and r.consumer_lag_total == 0 and not r.problems

    await wait_until(caught_up, timeout_s=30, interval_s=0.3, what="relay and indexer caught up")
    await pipeline.settled("books")

    cli = await pipeline.cli("status", "--json")
    assert cli.code == 0, cli.stdout + cli.stderr
    body = cli.json()
    assert body["relay"]["backlog"] == 0
    assert body["relay"]["lag_seconds"] == 0
    assert body["dlq"]["pending"] == 0
    assert body["collections"] == [{"collection": "books", "mongo": 5, "elasticsearch": 5}]
    assert [lease["role"] for lease in body["relay"]["leases"]] == ["active"]
    assert all(p["lag"] == 0 for p in body["indexer"]["partitions"])

    # Stopped again: new writes pile up as backlog with a lag, and the relay is no longer active.
    await pipeline.stop_relay()
    await pipeline.put("books", "b0", {"title": "changed"})
    await pipeline.put("books", "b9", {"title": "new"})
    report = await status(pipeline.clients)
    assert report.backlog == 2
    assert report.lag_seconds >= 0
    assert any("no active relay" in p for p in report.problems)


async def test_status_refuses_clearly_when_a_server_is_unreachable(pipeline: Pipeline) -> None:
    """An unreachable server is one line on stderr naming it, exit code 2, no traceback."""
    cli = await pipeline.cli("status", env={"OUTBOX_ES_URL": "http://127.0.0.1:9"})
    assert cli.code == 2
    assert "Elasticsearch at http://127.0.0.1:9 is unreachable" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert cli.stdout == ""
