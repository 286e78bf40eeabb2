"""The indexer as a real process (`python -m outbox_cli indexer`): kill -9, restart, logs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from elasticsearch import AsyncElasticsearch

from infra.settings import Settings
from tests.fixtures.indexer import (
    IndexerProcesses,
    KafkaWriter,
    indexed_sources,
    make_record,
    wait_until,
)


@pytest.fixture
def processes(idx_settings: Settings, tmp_path: Path) -> Iterator[IndexerProcesses]:
    handle = IndexerProcesses(idx_settings, tmp_path)
    try:
        yield handle
    finally:
        handle.kill_all()


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for raw in path.read_bytes().splitlines():
        if raw.startswith(b"{"):
            lines.append(orjson.loads(raw))
    return lines


async def test_an_indexer_killed_with_sigkill_is_replaced_and_new_events_are_indexed(
    processes: IndexerProcesses, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """kill -9 leaves the dead consumer in the group; the restarted process (same
    `group.instance.id`, static membership) gets its partitions back at once, so new
    events are indexed within seconds, not after a session timeout (or never)."""
    settings = processes.settings
    alias = settings.es.alias_for("books")
    await kafka_writer.ensure_topic("books")
    first, _ = processes.start("first")
    await processes.healthy(first)
    await kafka_writer.send_records(make_record("books", f"a{i}", 1) for i in range(20))

    async def indexed(count: int) -> bool:
        return len(await indexed_sources(es_client, alias)) == count

    await wait_until(lambda: indexed(20), timeout_s=30, what="20 documents indexed")

    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    second, _ = processes.start("second")
    await processes.healthy(second)
    await kafka_writer.send_records(make_record("books", f"b{i}", 1) for i in range(20))
    await wait_until(
        lambda: indexed(40),
        timeout_s=20,
        what="the events written after the kill to be indexed by the restarted indexer",
    )


async def test_every_indexed_event_logs_one_line_with_its_trace_id_and_no_payload(
    processes: IndexerProcesses, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """The JSON log has one `event_indexed` line per event with event_id, collection,
    document_id, topic, partition, offset and the trace id of its traceparent."""
    settings = processes.settings
    await kafka_writer.ensure_topic("books")
    process, log_path = processes.start("indexer")
    await processes.healthy(process)
    secret = "payload-text-that-must-not-be-logged"
    records = [
        make_record("books", "traced", 1, payload={"title": secret}),
        make_record("books", "traced", 2, payload={"title": secret}),
    ]
    await kafka_writer.send_records(records)

    def logged() -> list[dict[str, object]]:
        return [line for line in json_lines(log_path) if line.get("event") == "event_indexed"]

    await wait_until(lambda: len(logged()) == 2, timeout_s=30, what="two event_indexed lines")
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 20)
    lines = {line["event_id"]: line for line in logged()}
    assert set(lines) == {r.event_id for r in records}
    topic = settings.kafka.event_topic("books")
    for record in records:
        line = lines[record.event_id]
        assert record.traceparent is not None
        assert line["trace_id"] == record.traceparent.split("-")[1]
        assert (line["collection"], line["document_id"], line["topic"]) == (
            "books",
            "traced",
            topic,
        )
        assert isinstance(line["partition"], int)
        assert isinstance(line["offset"], int)
        assert line["level"] == "info"
        assert line["service"] == "indexer"
    assert {line["result"] for line in lines.values()} <= {"indexed", "stale"}
    assert secret not in log_path.read_text()
