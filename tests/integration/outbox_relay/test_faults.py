"""Exactly once across kill -9, restarts and a second relay; takeover by the standby."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from infra.mongo import MongoClient
from infra.settings import Settings
from tests.fixtures.relay import (
    RelayProcess,
    lease_document,
    make_history,
    read_checkpoints,
    read_events,
    wait_for_events,
    wait_until,
    write_outbox,
)
from tests.integration.outbox_relay.test_exactly_once import assert_exactly_once_in_order

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLLECTIONS = ("books", "films")
TAKEOVER_LIMIT_S = 10.0


async def test_sigkill_in_the_middle_of_batches_never_loses_or_duplicates(
    relay_settings: Settings,
    mongo: MongoClient,
    relay_processes: Callable[[Settings], RelayProcess],
) -> None:
    """The relay process SIGKILLed three times while records stream in → still exactly N."""
    settings = relay_settings.model_copy(
        update={"relay": relay_settings.relay.model_copy(update={"batch_max_events": 20})}
    )
    records = make_history(400, collections=COLLECTIONS, documents=30)
    writer = asyncio.create_task(
        write_outbox(mongo, settings, records, per_transaction=4, pause_s=0.03)
    )
    relay = relay_processes(settings)
    for _ in range(3):
        before = len(await read_checkpoints(settings))

        async def committed_more(before: int = before) -> bool:
            return len(await read_checkpoints(settings)) > before + 2

        await wait_until(committed_more, timeout_s=30, what="the relay to commit batches")
        relay.kill()
        relay = relay_processes(settings)
    await writer
    await wait_for_events(settings, COLLECTIONS, len(records), timeout_s=60)
    relay.terminate()
    assert_exactly_once_in_order(await read_events(settings, COLLECTIONS), records)


async def test_a_second_relay_stands_by_and_takes_over_within_ten_seconds(
    relay_settings: Settings,
    mongo: MongoClient,
    relay_processes: Callable[[Settings], RelayProcess],
) -> None:
    """Two relays with one name: one publishes, exactly once; kill it → the other takes over."""
    records = make_history(240, collections=COLLECTIONS, documents=20)
    first = relay_processes(relay_settings)

    async def leased() -> bool:
        doc = await lease_document(mongo, relay_settings)
        return doc is not None and f":{first.pid}:" in doc["holder"]

    await wait_until(leased, timeout_s=30, what="the first relay to take the lease")
    second = relay_processes(relay_settings)
    await write_outbox(mongo, relay_settings, records[:120])
    await wait_for_events(relay_settings, COLLECTIONS, 120)
    assert second.running(), second.log_text()[-2000:]

    first.kill()
    writer = asyncio.create_task(
        write_outbox(mongo, relay_settings, records[120:], per_transaction=4, pause_s=0.02)
    )

    async def second_holds() -> bool:
        doc = await lease_document(mongo, relay_settings)
        return doc is not None and f":{second.pid}:" in doc["holder"]

    await wait_until(second_holds, timeout_s=TAKEOVER_LIMIT_S, what="the standby to take over")
    await writer
    await wait_for_events(relay_settings, COLLECTIONS, len(records), timeout_s=30)
    assert second.terminate() == 0, "a clean stop (SIGTERM) exits 0"
    assert_exactly_once_in_order(await read_events(relay_settings, COLLECTIONS), records)
