"""Retention: the relay alone sets the outbox TTL, and never under an unpublished record."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from structlog.testing import capture_logs

from infra.devstack import free_port
from infra.envelope import utc_now
from infra.mongo import MongoClient, ensure_outbox_indexes
from infra.settings import Settings
from tests.fixtures.relay import (
    fast_relay,
    make_history,
    running_relay,
    wait_for_events,
    wait_until,
    write_outbox,
)
from tests.integration.outbox_relay.test_observability import metric

pytestmark = pytest.mark.integration


async def ttl_of(mongo: MongoClient, settings: Settings) -> int | None:
    outbox = mongo[settings.mongo.database][settings.mongo.outbox_collection]
    for spec in [s async for s in await outbox.list_indexes()]:
        if list(spec["key"].items()) == [("time", 1)] and "expireAfterSeconds" in spec:
            return int(spec["expireAfterSeconds"])
    return None


def with_ttl_days(settings: Settings, days: float) -> Settings:
    return settings.model_copy(
        update={"mongo": settings.mongo.model_copy(update={"outbox_ttl_days": days})}
    )


async def test_a_ttl_shorter_than_the_oldest_unpublished_record_is_refused(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """Records of a collection nobody publishes, two days old; a relay told to keep one
    day: the TTL stays at seven days, the refusal is an error log, and the age is exported."""
    settings = with_ttl_days(
        fast_relay(relay_settings, name="r-owned", collections=["owned"], metrics_port=free_port()),
        1.0,
    )
    two_days_ago = utc_now() - timedelta(days=2)
    old = [
        replace(r, time=two_days_ago)
        for r in make_history(3, collections=("orphan",), documents=3, seed=3)
    ]
    records = make_history(10, collections=("owned",), documents=3)
    await write_outbox(mongo, settings, old + records)  # creates the 7-day TTL index
    with capture_logs() as logs:
        async with (
            running_relay(settings),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.relay.metrics_port}") as http,
        ):
            await wait_for_events(settings, ("owned",), len(records))

            async def refused() -> bool:
                return any(e["event"] == "outbox_ttl_change_refused" for e in logs)

            await wait_until(refused, timeout_s=30, what="the TTL change to be refused")
            age = metric((await http.get("/metrics")).text, "outbox_oldest_unpublished_age_seconds")
            ttl = await ttl_of(mongo, settings)
    assert ttl == 7 * 86400
    refusal = next(e for e in logs if e["event"] == "outbox_ttl_change_refused")
    assert refusal["log_level"] == "error"
    assert refusal["wanted_seconds"] == 86400
    assert age >= 2 * 86400 - 60


async def test_the_relay_sets_the_ttl_once_nothing_unpublished_is_older(
    relay_settings: Settings, mongo: MongoClient
) -> None:
    """A relay that has caught up applies a shorter TTL: only unpublished records block it."""
    settings = with_ttl_days(relay_settings, 1.0)
    records = make_history(10, collections=("books",), documents=3)
    await write_outbox(mongo, settings, records)
    async with running_relay(settings):
        await wait_for_events(settings, ("books",), len(records))

        async def shortened() -> bool:
            return await ttl_of(mongo, settings) == 86400

        await wait_until(shortened, timeout_s=30, what="the TTL to follow the setting")


async def test_the_apis_index_setup_leaves_the_ttl_to_the_relay(
    settings: Settings, mongo: MongoClient
) -> None:
    """`ensure_outbox_indexes` (what the API calls) creates the document index, never the TTL
    nor a change of it, whatever the API's own TTL setting."""
    shorter = with_ttl_days(settings, 0.5)
    await ensure_outbox_indexes(mongo, shorter.mongo)
    assert await ttl_of(mongo, shorter) is None
    await write_outbox(mongo, settings, make_history(2, collections=("books",)))  # 7 days
    await ensure_outbox_indexes(mongo, shorter.mongo)
    assert await ttl_of(mongo, shorter) == 7 * 86400
