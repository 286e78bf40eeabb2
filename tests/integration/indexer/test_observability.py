"""`/healthz`, `/readyz` and `/metrics` on the indexer's metrics port, over real HTTP."""

from __future__ import annotations

import httpx
from elasticsearch import AsyncElasticsearch
from prometheus_client.parser import text_string_to_metric_families

from infra.devstack import free_port
from infra.settings import Settings
from tests.fixtures.indexer import (
    KafkaWriter,
    RunningIndexer,
    indexer_settings,
    make_record,
    start_indexer,
    wait_until,
)

METRIC_NAMES = {
    "outbox_indexer_events",
    "outbox_indexer_batch_size",
    "outbox_indexer_bulk_seconds",
    "outbox_indexer_consumer_lag",
    "outbox_indexer_dlq",
    "outbox_indexer_retries",
    "outbox_end_to_end_lag_seconds",
}


def base_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.indexer.metrics_port}"


async def get(settings: Settings, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(base_url(settings) + path)


async def samples(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`: (name, sorted labels) → value."""
    text = (await get(settings, "/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    all_samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_indexed_stale_events_and_the_end_to_end_lag(
    running_indexer: RunningIndexer, kafka_writer: KafkaWriter, es_client: AsyncElasticsearch
) -> None:
    """`/metrics` names every indexer metric; indexed and stale events and the commit →
    acknowledged histogram move when events flow; `/healthz` and `/readyz` answer 200."""
    settings = running_indexer.settings
    topic = settings.kafka.event_topic("books")
    await wait_until(lambda: _answers(settings), timeout_s=10, what="the metrics port")
    assert (await get(settings, "/healthz")).status_code == 200
    ready = await get(settings, "/readyz")
    assert ready.status_code == 200, ready.text

    before = await samples(settings)
    families = {
        f.name for f in text_string_to_metric_families((await get(settings, "/metrics")).text)
    }
    assert families >= METRIC_NAMES

    records = [make_record("books", f"m{i}", 1) for i in range(10)]
    await kafka_writer.send_records(records)
    await running_indexer.caught_up([topic])
    await kafka_writer.send_records(records[:3])  # redelivered: 409, already applied
    await running_indexer.caught_up([topic])

    after = await samples(settings)
    name = "outbox_indexer_events_total"
    assert (
        value(after, name, collection="books", result="indexed")
        - value(before, name, collection="books", result="indexed")
        == 10
    )
    assert (
        value(after, name, collection="books", result="stale")
        - value(before, name, collection="books", result="stale")
        == 3
    )
    lag_count = "outbox_end_to_end_lag_seconds_count"
    assert value(after, lag_count) - value(before, lag_count) == 13
    assert value(after, "outbox_indexer_batch_size_count") > value(
        before, "outbox_indexer_batch_size_count"
    )
    assert value(after, "outbox_indexer_bulk_seconds_count") > value(
        before, "outbox_indexer_bulk_seconds_count"
    )
    assert (await get(settings, "/readyz")).status_code == 200


async def _answers(settings: Settings) -> bool:
    try:
        return (await get(settings, "/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_readiness_turns_red_when_events_wait_and_elasticsearch_is_unreachable(
    settings: Settings, kafka_writer: KafkaWriter
) -> None:
    """With Elasticsearch unreachable (nothing listens on its port) and events waiting,
    `/readyz` answers 503 naming Elasticsearch, the retries are counted, and the waiting
    events show as consumer lag."""
    unreachable = settings.es.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})
    idx = indexer_settings(
        settings.model_copy(update={"es": unreachable}),
        stall_after_seconds=0.5,
    )
    writer = KafkaWriter(idx)
    topic = await writer.ensure_topic("books")
    indexer = start_indexer(idx)
    try:
        await wait_until(lambda: _answers(idx), timeout_s=10, what="the metrics port")
        assert (await get(idx, "/readyz")).status_code == 200  # idle is healthy
        before = await samples(idx)
        await writer.send_records(make_record("books", f"w{i}", 1) for i in range(5))

        async def red() -> bool:
            return (await get(idx, "/readyz")).status_code == 503

        await wait_until(red, timeout_s=15, what="/readyz to turn 503")
        body = (await get(idx, "/readyz")).json()
        assert body["status"] == "unavailable"
        assert "Elasticsearch" in body["detail"]

        async def lag_shown() -> bool:
            current = await samples(idx)
            return (
                sum(
                    v
                    for (name, labels), v in current.items()
                    if name == "outbox_indexer_consumer_lag" and ("topic", topic) in labels
                )
                == 5
            )

        await wait_until(lag_shown, timeout_s=15, what="the waiting events as consumer lag")
        after = await samples(idx)
        retries = "outbox_indexer_retries_total"
        assert value(after, retries, operation="es_index_create") > value(
            before, retries, operation="es_index_create"
        )
        assert not indexer.task.done()
    finally:
        await indexer.stop()
        writer.producer.close()
