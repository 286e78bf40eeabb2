"""Heartbeats on a quiet outbox, automatic recovery after oplog history loss, the DLQ."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from pymongo import AsyncMongoClient, monitoring
from structlog.testing import capture_logs

from faults.clock import skewed_clock_env
from infra.devstack import EmbeddedStack
from infra.envelope import EventType, OutboxRecord, utc_now
from infra.kafka import ensure_topics
from infra.mongo import MongoClient, mongo_client
from infra.settings import KafkaSettings, Settings
from outbox_relay.change_stream import operation_time
from outbox_relay.checkpoint import CheckpointMode
from outbox_relay.recovery import scan_outbox
from outbox_relay.scope import CollectionScope
from tests.conftest import ServerUrls, settings_for
from tests.fixtures.relay import (
    fast_relay,
    lease_document,
    make_history,
    read_checkpoints,
    read_dlq,
    read_events,
    restamped,
    running_relay,
    wait_for_events,
    wait_until,
    write_outbox,
)
from tests.integration.outbox_relay.test_exactly_once import assert_exactly_once_in_order

pytestmark = pytest.mark.integration

COLLECTIONS = ("books", "films")


async def test_the_checkpoint_advances_on_a_quiet_outbox_beside_a_busy_collection(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """No outbox writes, many writes elsewhere → heartbeat checkpoints follow the oplog."""
    async with running_relay(relay_settings):

        async def streaming() -> bool:
            cps = await read_checkpoints(relay_settings)
            return bool(cps) and cps[-1].mode is CheckpointMode.STREAM

        await wait_until(streaming, timeout_s=20, what="a first stream checkpoint")
        busy = mongo[relay_settings.mongo.database]["busy"]
        for i in range(30):
            await busy.insert_one({"i": i})
        after_busy = await operation_time(mongo)

        async def caught_up() -> bool:
            cps = await read_checkpoints(relay_settings)
            last = cps[-1].cluster_time
            return last is not None and last >= after_busy

        await wait_until(caught_up, timeout_s=20, what="the checkpoint to pass the busy writes")
    assert await read_events(relay_settings, COLLECTIONS) == []  # heartbeats carry no events


async def streaming(settings: Settings) -> bool:
    """The relay's last committed checkpoint is a stream-mode one (no recovery under way)."""
    cps = await read_checkpoints(settings)
    return bool(cps) and cps[-1].mode is CheckpointMode.STREAM


async def _history_lost(client: MongoClient, settings: Settings) -> bool:
    """Whether the oplog no longer reaches back to the last checkpoint's cluster time."""
    checkpoint = (await read_checkpoints(settings))[-1]
    assert checkpoint.cluster_time is not None
    oldest = await client.local["oplog.rs"].find_one(sort=[("$natural", 1)])
    return oldest is not None and oldest["ts"] > checkpoint.cluster_time


async def _push_checkpoint_out_of_the_oplog(client: MongoClient, settings: Settings) -> None:
    """Other writes plus a prune until the checkpoint's resume point is really gone.

    SecantusDB prunes lazily, so one round is not always enough; the test needs the loss
    to have happened, not just to be likely.
    """
    busy = client[settings.mongo.database]["busy"]
    for round_ in range(10):
        await busy.insert_many([{"round": round_, "i": i} for i in range(120)])
        await client.admin.command({"secantusAdmin.pruneOplog": 1})
        if await _history_lost(client, settings):
            return
    raise AssertionError("the checkpoint never left the oplog")


@pytest.fixture
def tiny_oplog_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A stack whose MongoDB keeps only 50 oplog entries."""
    stack = EmbeddedStack.on_free_ports(tmp_path / "stack", persistent=False, oplog_max_entries=50)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_history_loss_is_recovered_from_the_outbox_without_losing_a_record(
    tiny_oplog_stack: EmbeddedStack,
) -> None:
    """The checkpoint leaves a tiny oplog while the relay is down → exactly N after a restart."""
    stack = tiny_oplog_stack
    settings = fast_relay(
        settings_for(ServerUrls(stack.mongo_uri, stack.kafka_bootstrap, stack.es_url))
    )
    records = make_history(160, collections=COLLECTIONS, documents=15)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    try:
        async with running_relay(settings):
            await write_outbox(client, settings, records[:60])
            await wait_for_events(settings, COLLECTIONS, 60)
            await wait_until(
                lambda: streaming(settings), timeout_s=20, what="the first start's recovery to end"
            )
        # While the relay is down: more outbox records, and enough other writes to push the
        # checkpoint out of the 50-entry oplog.
        records[60:] = restamped(records[60:])
        await write_outbox(client, settings, records[60:])
        await _push_checkpoint_out_of_the_oplog(client, settings)

        async with running_relay(settings):
            await wait_for_events(settings, COLLECTIONS, len(records))
            await wait_until(
                lambda: streaming(settings), timeout_s=20, what="normal checkpoints again"
            )
            # Written after the recovery: the change stream carries them.
            late = make_history(20, collections=("late",), documents=5, seed=11)
            await write_outbox(client, settings, late)
            await wait_for_events(settings, ("late",), len(late))
        lease = await lease_document(client, settings)
    finally:
        await client.close()
    assert_exactly_once_in_order(await read_events(settings, COLLECTIONS), records)
    assert lease is not None
    assert lease["history_lost_recoveries"] == 1
    assert lease["duplicates_possible"] == 0


async def test_a_record_kafka_refuses_goes_to_the_dlq_and_later_records_still_flow(
    settings: Settings, mongo: MongoClient
) -> None:
    """Too big for the producer, or for the topic → DLQ with the reason; the relay moves on."""
    small = settings.model_copy(
        update={
            "kafka": KafkaSettings(**{**settings.kafka.model_dump(), "message_max_bytes": 16384})
        }
    )
    small = fast_relay(small)
    # This topic refuses more than 20 kB although the producer would send up to 80 kB.
    await ensure_topics(
        small.kafka, {small.kafka.event_topic("films"): {"max.message.bytes": "20000"}}
    )
    records = make_history(40, collections=COLLECTIONS, documents=5)
    huge = _resized(records[0], "books", "huge", 200_000)  # > the producer's limit
    big = _resized(records[1], "films", "big", 50_000)  # > the films topic's limit
    async with running_relay(small):
        await write_outbox(mongo, small, [huge, big])
        await write_outbox(mongo, small, records[2:])
        await wait_for_events(small, COLLECTIONS, len(records) - 2)

        async def dead_lettered() -> bool:
            return len(await read_dlq(small)) >= 2

        await wait_until(dead_lettered, timeout_s=20, what="two dead letters")
    assert_exactly_once_in_order(await read_events(small, COLLECTIONS), records[2:])
    letters = {m.ce_id: m for m in await read_dlq(small)}
    assert set(letters) == {huge.event_id, big.event_id}
    for record in (huge, big):
        letter = letters[record.event_id]
        assert letter.header("dlq_stage") == "relay"
        assert letter.header("dlq_source_topic") == small.kafka.event_topic(record.collection)
        assert "MSG_SIZE_TOO_LARGE" in (letter.header("dlq_error") or "")
        assert letter.key == record.kafka_key()


def _resized(record: OutboxRecord, collection: str, document_id: str, size: int) -> OutboxRecord:
    return OutboxRecord(
        event_id=record.event_id,
        collection=collection,
        document_id=document_id,
        version=1,
        type=record.type.CREATED,
        payload={"blob": "x" * size},
        time=record.time,
    )


def tiny_settings(stack: EmbeddedStack, **relay: object) -> Settings:
    return fast_relay(
        settings_for(ServerUrls(stack.mongo_uri, stack.kafka_bootstrap, stack.es_url)), **relay
    )


async def test_a_recovery_never_dead_letters_a_record_again(
    tiny_oplog_stack: EmbeddedStack,
) -> None:
    """A record Kafka refused is in the DLQ once; a history-loss recovery leaves it there."""
    settings = tiny_settings(tiny_oplog_stack)
    settings = settings.model_copy(
        update={
            "kafka": KafkaSettings(**{**settings.kafka.model_dump(), "message_max_bytes": 16384})
        }
    )
    records = make_history(60, collections=COLLECTIONS, documents=10)
    huge = _resized(records[0], "books", "huge", 200_000)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    try:
        async with running_relay(settings):
            await write_outbox(client, settings, [huge, *records[1:30]])
            await wait_for_events(settings, COLLECTIONS, 29)
            await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode")
        await write_outbox(client, settings, restamped(records[30:]))
        await _push_checkpoint_out_of_the_oplog(client, settings)
        async with running_relay(settings):
            await wait_for_events(settings, COLLECTIONS, 59)
            await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode again")
        lease = await lease_document(client, settings)
    finally:
        await client.close()
    assert lease is not None
    assert lease["history_lost_recoveries"] == 1
    assert [m.ce_id for m in await read_dlq(settings)] == [huge.event_id]


async def test_checkpoints_say_recovering_until_the_stream_passes_the_scan(
    tiny_oplog_stack: EmbeddedStack,
) -> None:
    """History lost with nothing new to publish: no stream-mode checkpoint carries the lost
    resume token; the recovery's checkpoints say `recovering`, then normal ones resume."""
    settings = tiny_settings(tiny_oplog_stack)
    records = make_history(20, collections=COLLECTIONS, documents=5)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    try:
        async with running_relay(settings):
            await write_outbox(client, settings, records)
            await wait_for_events(settings, COLLECTIONS, len(records))
            await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode")
        lost = (await read_checkpoints(settings))[-1]
        await _push_checkpoint_out_of_the_oplog(client, settings)
        async with running_relay(settings):

            async def moved_on() -> bool:
                cps = await read_checkpoints(settings)
                return cps[-1].mode is CheckpointMode.STREAM and cps[-1] != lost

            await wait_until(moved_on, timeout_s=30, what="normal checkpoints after the loss")
        checkpoints = await read_checkpoints(settings)
    finally:
        await client.close()
    since_loss = checkpoints[checkpoints.index(lost) + 1 :]
    first_stream = next(i for i, cp in enumerate(since_loss) if cp.mode is CheckpointMode.STREAM)
    assert first_stream > 0
    assert all(cp.mode is CheckpointMode.RECOVERING for cp in since_loss[:first_stream])
    assert all(cp.resume_token != lost.resume_token for cp in since_loss[first_stream:])
    assert_exactly_once_in_order(await read_events(settings, COLLECTIONS), records)


async def test_a_recovery_window_reaching_into_expired_records_is_logged_as_an_error(
    tiny_oplog_stack: EmbeddedStack,
) -> None:
    """The window starts before the oldest retained record, where the TTL deletes: an error
    log names it (records may have expired unpublished)."""
    settings = tiny_settings(tiny_oplog_stack, recovery_margin_seconds=40.0)
    ttl_days = 30 / 86400
    settings = settings.model_copy(
        update={"mongo": settings.mongo.model_copy(update={"outbox_ttl_days": ttl_days})}
    )
    records = make_history(40, collections=COLLECTIONS, documents=8)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    try:
        await outbox.create_index(
            [("time", 1)], name="outbox_ttl", expireAfterSeconds=int(ttl_days * 86400)
        )
        async with running_relay(settings):
            await write_outbox(client, settings, records[:20])
            await wait_for_events(settings, COLLECTIONS, 20)
            await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode")
        await write_outbox(client, settings, restamped(records[20:]))
        await _push_checkpoint_out_of_the_oplog(client, settings)
        with capture_logs() as logs:
            async with running_relay(settings):
                await wait_for_events(settings, COLLECTIONS, len(records))
                await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode")
    finally:
        await client.close()
    expired = [e for e in logs if e["event"] == "outbox_recovery_window_expired"]
    assert expired, [e["event"] for e in logs]
    assert expired[0]["log_level"] == "error"


@pytest.fixture
def mongo_ahead_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A tiny-oplog stack whose MongoDB clock runs 1.5 s ahead of this host's (libfaketime)."""
    stack = EmbeddedStack.on_free_ports(tmp_path / "stack", persistent=False, oplog_max_entries=50)
    stack.start()
    try:
        mongo = stack.mongo
        mongo.stop()  # in memory: nothing to keep
        mongo.argv = ["env", *(f"{k}={v}" for k, v in skewed_clock_env(1.5).items()), *mongo.argv]
        mongo.start()
        yield stack
    finally:
        stack.stop()


def stamped_by_mongodb(records: list[OutboxRecord], ahead_s: float) -> list[OutboxRecord]:
    """The records with `time` from MongoDB's clock ($$NOW in the write's transaction)."""
    now = utc_now() + timedelta(seconds=ahead_s)
    return [replace(r, time=now) for r in records]


async def test_a_relay_clock_behind_mongodb_repeats_nothing_after_history_loss(
    mongo_ahead_stack: EmbeddedStack,
) -> None:
    """The relay's clock (its Kafka timestamps) 1.5 s behind MongoDB's (record and cluster
    times), a 2 s margin: the recovery's read-back still finds what the relay published
    just before the loss instead of publishing it again."""
    settings = tiny_settings(mongo_ahead_stack, recovery_margin_seconds=2.0)
    records = make_history(300, collections=COLLECTIONS, documents=20)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    try:
        async with running_relay(settings):
            for start in range(0, 200, 4):  # writes right up to the stop
                await write_outbox(
                    client, settings, stamped_by_mongodb(records[start : start + 4], 1.5)
                )
                await asyncio.sleep(0.02)  # pacing the load, not synchronisation
            await wait_for_events(settings, COLLECTIONS, 200)
        await write_outbox(client, settings, stamped_by_mongodb(records[200:], 1.5))
        await _push_checkpoint_out_of_the_oplog(client, settings)
        async with running_relay(settings):
            await wait_for_events(settings, COLLECTIONS, len(records))
            await wait_until(lambda: streaming(settings), timeout_s=30, what="stream mode again")
        lease = await lease_document(client, settings)
    finally:
        await client.close()
    assert lease is not None
    assert lease["history_lost_recoveries"] == 1
    assert lease["duplicates_possible"] == 0
    assert_exactly_once_in_order(await read_events(settings, COLLECTIONS), records)


async def test_a_first_start_reads_back_only_what_the_outbox_still_holds(
    settings: Settings, mongo: MongoClient
) -> None:
    """20k events from three days ago in Kafka, ten records in the outbox: the first start's
    read-back reads none of the old events, and publishes the ten exactly once."""
    settings = fast_relay(settings)
    topic = settings.kafka.event_topic("books")
    await ensure_topics(settings.kafka, {topic: {}})
    await asyncio.to_thread(_produce_old_events, settings, topic, 20_000)
    records = make_history(10, collections=("books",), documents=5)
    await write_outbox(mongo, settings, records)
    with capture_logs() as logs:
        async with running_relay(settings):
            await wait_for_events(settings, ("books",), 20_000 + len(records), timeout_s=60)
            await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode")
    done = [e for e in logs if e["event"] == "outbox_recovery_part_done"]
    assert done, [e["event"] for e in logs]
    assert done[0]["in_kafka"] == 0
    messages = [m for m in await read_events(settings, ("books",)) if m.key != b"old"]
    assert_exactly_once_in_order(messages, records)


def _produce_old_events(settings: Settings, topic: str, n: int) -> None:
    three_days_ago_ms = int((utc_now() - timedelta(days=3)).timestamp() * 1000)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 50})
    for i in range(n):
        while True:
            try:
                producer.produce(
                    topic,
                    key=b"old",
                    value=b"{}",
                    headers=[("ce_id", f"old-{i}".encode()), ("ce_aggregateversion", b"1")],
                    timestamp=three_days_ago_ms,
                )
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0


async def test_the_recovery_scan_reads_only_majority_committed_records(
    settings: Settings,
) -> None:
    """The scan asks for majority read concern: a record a failover rolls back is never
    published (the change stream only ever shows majority-committed ones either)."""
    listener = _FindCommands()
    client: MongoClient = AsyncMongoClient(
        settings.mongo.uri.get_secret_value(), tz_aware=True, event_listeners=[listener]
    )
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    try:
        await write_outbox(client, settings, make_history(5, collections=COLLECTIONS))
        scanned = [
            raw
            async for batch in scan_outbox(outbox, None, CollectionScope.of([]), 100)
            for raw in batch
        ]
    finally:
        await client.close()
    assert len(scanned) == 5
    assert listener.finds, "the scan sent no find"
    assert all(f.get("readConcern", {}).get("level") == "majority" for f in listener.finds)


class _FindCommands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class HotWriter:
    """Writes new versions of a few hot documents, one record per transaction, as the API."""

    def __init__(self, client: MongoClient, settings: Settings, documents: int = 10) -> None:
        self._client = client
        self._outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
        self._versions = dict.fromkeys((f"h{i}" for i in range(documents)), 0)
        self.records: list[OutboxRecord] = []

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            doc = f"h{n % len(self._versions)}"
            self._versions[doc] += 1
            record = OutboxRecord(
                event_id=str(uuid.uuid4()),
                collection="hot",
                document_id=doc,
                version=self._versions[doc],
                type=EventType.CREATED if self._versions[doc] == 1 else EventType.UPDATED,
                payload={"n": n},
                time=utc_now(),
            )
            async with self._client.start_session() as session, await session.start_transaction():
                await self._outbox.insert_one(record.to_mongo(), session=session)
            self.records.append(record)
            n += 1
            await asyncio.sleep(0.005)  # pacing the load, not synchronisation


async def prune_oplog_until(client: MongoClient, stop: asyncio.Event) -> None:
    """SecantusDB prunes lazily: prune every 0.2 s so the small oplog really is small."""
    while not stop.is_set():
        await client.admin.command({"secantusAdmin.pruneOplog": 1})
        await asyncio.sleep(0.2)  # a pruning cadence, not synchronisation


@pytest.fixture
def small_oplog_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A stack whose MongoDB keeps 60 oplog entries: well under a second under this load."""
    stack = EmbeddedStack.on_free_ports(tmp_path / "stack", persistent=False, oplog_max_entries=60)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_history_loss_under_load_finishes_in_order_even_when_recovery_outlasts_the_oplog(
    small_oplog_stack: EmbeddedStack,
) -> None:
    """Thousands of records to recover, hot documents written throughout the scan, an oplog
    that rolls over every second or two: the recovery still ends (normal checkpoints
    resume while the writes go on), every record exactly once, each document in order."""
    settings = tiny_settings(small_oplog_stack)
    backlog = make_history(10_000, collections=COLLECTIONS, documents=300)
    client = mongo_client(settings.mongo, app_name="relay-tests")
    stop = asyncio.Event()
    hot = HotWriter(client, settings)
    try:
        async with running_relay(settings):
            await write_outbox(client, settings, backlog[:100])
            await wait_for_events(settings, COLLECTIONS, 100)
            await wait_until(lambda: streaming(settings), timeout_s=20, what="stream mode")
        await write_outbox(client, settings, restamped(backlog[100:]), per_transaction=100)
        await _push_checkpoint_out_of_the_oplog(client, settings)
        load = asyncio.gather(hot.run(stop), prune_oplog_until(client, stop))
        try:
            async with running_relay(settings):
                await wait_for_events(settings, COLLECTIONS, len(backlog), timeout_s=90)
                await wait_until(
                    lambda: streaming(settings), timeout_s=90, what="normal checkpoints under load"
                )
                stop.set()
                await load
                await wait_for_events(settings, ("hot",), len(hot.records), timeout_s=60)
        finally:
            stop.set()
            await asyncio.gather(load, return_exceptions=True)
    finally:
        await client.close()
    assert_exactly_once_in_order(
        await read_events(settings, (*COLLECTIONS, "hot")), [*backlog, *hot.records]
    )
