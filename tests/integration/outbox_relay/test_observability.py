"""`/metrics`, `/healthz` and `/readyz` of a running relay, against the real servers."""

from __future__ import annotations

import re
import signal

import httpx
import pytest

from infra.devstack import EmbeddedStack, free_port
from infra.mongo import mongo_client
from infra.settings import Settings
from tests.conftest import ServerUrls, settings_for
from tests.fixtures.relay import (
    fast_relay,
    make_history,
    read_events,
    running_relay,
    wait_for_events,
    wait_until,
    write_outbox,
)
from tests.integration.outbox_relay.test_exactly_once import assert_exactly_once_in_order

pytestmark = pytest.mark.integration

COLLECTIONS = ("books", "films")
RELAY_METRICS = (
    "outbox_relay_events_published_total",
    "outbox_relay_transactions_total",
    "outbox_relay_batch_size",
    "outbox_relay_commit_seconds",
    "outbox_relay_lag_seconds",
    "outbox_outbox_backlog",
    "outbox_outbox_unowned",
    "outbox_oldest_unpublished_age_seconds",
    "outbox_relay_oplog_window_seconds",
    "outbox_relay_history_lost_total",
    "outbox_relay_duplicates_possible_total",
    "outbox_relay_dlq_total",
    "outbox_relay_active",
)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def observed(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.relay.metrics_port}", timeout=10.0
    )


async def test_metrics_are_exposed_and_count_published_events(
    relay_settings: Settings,
) -> None:
    """An idle relay is ready; records flowing move `outbox_relay_events_published_total`."""
    settings = fast_relay(relay_settings, metrics_port=free_port())
    records = make_history(60, collections=COLLECTIONS, documents=10)
    books = sum(r.collection == "books" for r in records)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    try:
        async with running_relay(settings), observed(settings) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False  # not listening yet

            await wait_until(ready, timeout_s=20, what="/readyz 200 on an idle relay")
            assert (await http.get("/healthz")).status_code == 200
            before = metric((await http.get("/metrics")).text, *BOOKS_PUBLISHED)

            await write_outbox(client, settings, records)
            await wait_for_events(settings, COLLECTIONS, len(records))

            async def counted() -> bool:
                text = (await http.get("/metrics")).text
                return metric(text, *BOOKS_PUBLISHED) >= before + books

            await wait_until(counted, timeout_s=10, what="the published counter to move")
            response = await http.get("/metrics")
            assert (await http.get("/readyz")).json() == {"status": "ok", "detail": "ok"}
    finally:
        await client.close()
    text = response.text
    for name in RELAY_METRICS:
        assert re.search(rf"^{name}(\{{|_bucket| )", text, re.MULTILINE), f"{name} missing"
    assert metric(text, *BOOKS_PUBLISHED) == before + books
    assert metric(text, "outbox_relay_active") == 1
    assert metric(text, "outbox_relay_transactions_total", 'result="committed"') >= 1


BOOKS_PUBLISHED = ("outbox_relay_events_published_total", 'collection="books"')


async def test_readiness_turns_red_when_records_wait_and_kafka_stops_committing(
    pausable_stack: EmbeddedStack,
) -> None:
    """Kafka paused (SIGSTOP) with records waiting → 503 "stalled"; resumed → 200, exactly once."""
    settings = fast_relay(
        settings_for(
            ServerUrls(
                pausable_stack.mongo_uri, pausable_stack.kafka_bootstrap, pausable_stack.es_url
            )
        ),
        metrics_port=free_port(),
        stall_after_seconds=1.0,
    )
    records = make_history(60, collections=COLLECTIONS, documents=10)
    kafka = pausable_stack.kafka_es.process
    assert kafka is not None
    client = mongo_client(settings.mongo, app_name="relay-tests")
    try:
        async with running_relay(settings), observed(settings) as http:
            await write_outbox(client, settings, records[:20])
            await wait_for_events(settings, COLLECTIONS, 20)

            async def status_is(code: int) -> bool:
                return (await http.get("/readyz")).status_code == code

            await wait_until(lambda: status_is(200), timeout_s=20, what="/readyz 200")

            kafka.send_signal(signal.SIGSTOP)  # the broker stops answering; MongoDB still does
            try:
                await write_outbox(client, settings, records[20:])
                await wait_until(lambda: status_is(503), timeout_s=60, what="/readyz 503")
                body = (await http.get("/readyz")).json()
                backlog = metric((await http.get("/metrics")).text, "outbox_outbox_backlog")
            finally:
                kafka.send_signal(signal.SIGCONT)
            assert body["status"] == "unavailable"
            assert body["detail"].startswith("stalled: "), body
            assert backlog > 0

            await wait_until(lambda: status_is(200), timeout_s=60, what="/readyz 200 again")
            await wait_for_events(settings, COLLECTIONS, len(records), timeout_s=60)
    finally:
        await client.close()
    assert_exactly_once_in_order(await read_events(settings, COLLECTIONS), records)
