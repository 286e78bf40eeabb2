"""Relays with different names split the outbox: nothing hidden, unowned or skipped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest
from confluent_kafka import Producer

from infra.devstack import free_port
from infra.kafka import ensure_topics
from infra.mongo import MongoClient
from infra.settings import Settings
from operator_tools.clients import open_clients
from operator_tools.status import status
from tests.fixtures.relay import (
    RelayProcess,
    checkpoint_topics,
    fast_relay,
    make_history,
    read_checkpoints,
    read_events,
    restamped,
    running_relay,
    wait_for_events,
    wait_until,
    write_outbox,
)
from tests.integration.outbox_relay.test_exactly_once import assert_exactly_once_in_order

pytestmark = pytest.mark.integration


def named(settings: Settings, name: str, collections: list[str], **relay: object) -> Settings:
    return fast_relay(settings, name=name, collections=collections, **relay)


def open_foreign_transaction(settings: Settings, relay: str, topics: list[str]) -> Producer:
    """`relay`'s transactional producer, killed inside its commit: a transaction left open.

    It appends a checkpoint-like record to each of `topics` and never commits; the
    stand-in Kafka never times the transaction out (real Kafka would after 60 s).
    """
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "transactional.id": f"{settings.kafka.namespace}.relay.{relay}",
            "transaction.timeout.ms": 900000,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for topic in topics:
        producer.produce(topic, key=relay.encode(), value=b'{"format": 99}')
    producer.flush(30)
    return producer


async def test_a_relay_restarting_beside_another_names_open_transaction_repeats_and_skips_nothing(
    relay_settings: Settings,
    mongo: MongoClient,
    relay_processes: Callable[..., RelayProcess],
) -> None:
    """Relay `r-films` killed inside a commit, its transaction open; `r-books` SIGKILLed and
    restarted three times meanwhile → every books record exactly once, none waiting."""
    books = named(relay_settings, "r-books", ["books"])
    records = make_history(240, collections=("books",), documents=20)
    relay = relay_processes(books)
    await write_outbox(mongo, books, records[:40])
    await wait_for_events(books, ("books",), 40)
    # Wherever another name's checkpoints go, that name's open transaction sits there.
    topics = checkpoint_topics(books, "r-films")
    await ensure_topics(books.kafka, {topic: {} for topic in topics}, partitions=1)
    foreign = await asyncio.to_thread(open_foreign_transaction, books, "r-films", topics)
    try:
        for n in range(3):
            start = 40 + n * 60
            writer = asyncio.create_task(
                write_outbox(mongo, books, records[start : start + 60], per_transaction=3)
            )
            before = len(await read_checkpoints(books))

            async def committed_more(before: int = before) -> bool:
                return len(await read_checkpoints(books)) > before + 1

            await wait_until(committed_more, timeout_s=60, what="r-books to commit after restart")
            relay.kill()
            await writer
            relay = relay_processes(books)
        await write_outbox(mongo, books, records[220:])
        await wait_for_events(books, ("books",), len(records), timeout_s=60)
    finally:
        relay.terminate()
        await asyncio.to_thread(foreign.abort_transaction, 30)
    assert_exactly_once_in_order(await read_events(books, ("books",)), records)


async def test_records_of_a_collection_no_relay_publishes_are_backlog_and_turn_readiness_red(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """A relay publishing only `owned`, records in `orphan`: `outbox status` counts them as
    unowned backlog and names the collection; the relay's /readyz is 503 saying so."""
    owned = named(relay_settings, "r-owned", ["owned"], metrics_port=free_port())
    records = make_history(20, collections=("owned",), documents=5)
    orphans = make_history(3, collections=("orphan",), documents=3, seed=3)
    async with (
        running_relay(owned),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{owned.relay.metrics_port}") as http,
    ):
        await write_outbox(mongo, owned, records + orphans)
        await wait_for_events(owned, ("owned",), len(records))

        async def red() -> bool:
            try:
                response = await http.get("/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 503

        await wait_until(red, timeout_s=30, what="/readyz 503 for the unowned records")
        readyz = (await http.get("/readyz")).json()
        metrics = (await http.get("/metrics")).text
        async with open_clients(owned) as clients:
            report = await status(clients)
    assert "orphan" in readyz["detail"], readyz
    assert report.backlog == 3
    assert report.unowned == 3
    assert report.unowned_collections == ["orphan"]
    assert any("orphan" in p and "no relay publishes" in p for p in report.problems)
    assert report.oldest_unpublished_time == min(r.time for r in orphans)
    assert "outbox_outbox_unowned 3.0" in metrics
    assert await read_events(owned, ("orphan",)) == []


async def test_a_collection_added_to_a_relay_has_its_whole_history_published(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """`films` moves from a stopped `r-films` to `r-books`, `authors` (owned by nobody so
    far) is added too: every record of both is published, everything exactly once."""
    books = named(relay_settings, "r-books", ["books"])
    films = named(relay_settings, "r-films", ["films"])
    history = make_history(200, collections=("books", "films"), documents=10)
    authors = make_history(30, collections=("authors",), documents=5, seed=5)
    async with running_relay(books):
        async with running_relay(films):
            await write_outbox(mongo, books, history[:100])
            await wait_for_events(books, ("books", "films"), 100)
        # r-films is gone; r-books publishes on past these records.
        late = restamped(history[100:])
        await write_outbox(mongo, books, late + authors)
        late_books = sum(r.collection == "books" for r in history)
        await wait_for_events(books, ("books",), late_books)
    both = named(relay_settings, "r-books", ["books", "films", "authors"])
    async with running_relay(both):
        await wait_for_events(both, ("books", "films", "authors"), len(history) + len(authors))
        extra = [  # new documents: the stream carries them after the recovery
            replace(r, document_id=f"new-{r.document_id}")
            for r in make_history(30, collections=("films", "authors"), documents=5, seed=9)
        ]
        await write_outbox(mongo, both, extra)
        total = len(history) + len(authors) + len(extra)
        await wait_for_events(both, ("books", "films", "authors"), total)
    assert_exactly_once_in_order(
        await read_events(both, ("books", "films", "authors")),
        [*history[:100], *late, *authors, *extra],
    )


def test_relay_names_are_valid_kafka_topic_name_parts(relay_settings: Settings) -> None:
    """A relay name ends up in a topic name: characters Kafka refuses are refused at start."""
    with pytest.raises(ValueError, match="name"):
        fast_relay(relay_settings, name=f"books/{uuid.uuid4().hex[:4]}")
