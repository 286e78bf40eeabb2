"""Heartbeats on a quiet outbox, automatic recovery after oplog history loss, the DLQ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.devstack import EmbeddedStack
from infra.envelope import OutboxRecord
from infra.kafka import ensure_topics
from infra.mongo import MongoClient, mongo_client
from infra.settings import KafkaSettings, Settings
from outbox_relay.change_stream import operation_time
from outbox_relay.checkpoint import CheckpointMode
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
        # While the relay is down: more outbox records, and enough other writes to push the
        # checkpoint out of the 50-entry oplog.
        records[60:] = restamped(records[60:])
        await write_outbox(client, settings, records[60:])
        await _push_checkpoint_out_of_the_oplog(client, settings)

        async with running_relay(settings):
            await wait_for_events(settings, COLLECTIONS, len(records))

            async def streaming_again() -> bool:
                cps = await read_checkpoints(settings)
                return cps[-1].mode is CheckpointMode.STREAM

            await wait_until(streaming_again, timeout_s=20, what="normal checkpoints again")
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
