"""The relay service: stand by until this process holds the lease, then publish the outbox.

`serve(settings)` runs until cancelled (SIGTERM/Ctrl-C through `outbox relay`) or until
a fatal error (e.g. fenced by another relay), which it raises so the process exits
non-zero and its supervisor restarts it. For the whole life of the process, standby
included, `/healthz`, `/readyz` and `/metrics` answer on `OUTBOX_RELAY_METRICS_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from pymongo.errors import PyMongoError

from infra.errors import FatalError, ServerUnreachableError
from infra.health import HealthServer, ProgressMonitor, service_registry
from infra.mongo import MongoClient, ensure_outbox_indexes, map_mongo_error, mongo_client, ping
from infra.retry import retrying
from infra.settings import Settings
from infra.tracing import configure_tracing
from outbox_relay.backlog import watch_backlog
from outbox_relay.change_stream import oplog_seconds_left
from outbox_relay.lease import LEASE_COLLECTION, LeaseLostError, MongoLease
from outbox_relay.metrics import RelayMetrics
from outbox_relay.ports import EventPublisher
from outbox_relay.progress import RelayState
from outbox_relay.publisher import KafkaEventPublisher
from outbox_relay.relay import OutboxRelay
from outbox_relay.retention import OutboxRetention
from outbox_relay.scope import CollectionScope

log = structlog.get_logger(__name__)


async def serve(
    settings: Settings, *, publisher: Callable[[Settings], EventPublisher] = KafkaEventPublisher
) -> None:
    """Run the relay named `settings.relay.name` (see the module docstring).

    `publisher` builds the Kafka adapter each time this process becomes active.
    """
    relay_settings = settings.relay
    structlog.contextvars.bind_contextvars(relay=relay_settings.name)
    metrics = RelayMetrics(service_registry())
    state = RelayState(
        name=relay_settings.name,
        metrics=metrics,
        scope=CollectionScope.of(relay_settings.collections),
        monitor=ProgressMonitor(stall_after_s=relay_settings.stall_after_seconds),
    )
    state.became_standby()
    health = HealthServer(
        relay_settings.metrics_host,
        relay_settings.metrics_port,
        state.readiness,
        registry=metrics.registry,
    )
    async with health:
        await _serve(settings, state, publisher)


async def _serve(
    settings: Settings, state: RelayState, publisher: Callable[[Settings], EventPublisher]
) -> None:
    relay_settings = settings.relay
    client = mongo_client(settings.mongo, app_name=f"outbox-relay-{relay_settings.name}")
    try:
        async for attempt in retrying("relay_startup", attempts=0, max_delay_s=120):
            with attempt:
                try:
                    await ping(client, settings.mongo)
                except ServerUnreachableError as e:
                    state.dependency_down("mongodb", str(e))
                    raise
                state.dependency_up("mongodb")
                try:
                    await ensure_outbox_indexes(client, settings.mongo)
                except PyMongoError as e:
                    raise map_mongo_error(e) from e
        leases = client[settings.mongo.database][LEASE_COLLECTION]
        lease = MongoLease(
            leases,
            name=relay_settings.name,
            ttl_seconds=relay_settings.lease_ttl_seconds,
            state=state,
        )
        while True:
            state.became_standby()
            await lease.wait_acquired()
            state.became_active()
            try:
                await _run_active(settings, client, state, lease, publisher(settings))
            except LeaseLostError as e:
                log.error("lease_lost", error=str(e))  # noqa: TRY400 - no traceback wanted
                continue
            finally:
                state.became_standby()
    finally:
        await client.close()


async def _run_active(
    settings: Settings,
    client: MongoClient,
    state: RelayState,
    lease: MongoLease,
    publisher: EventPublisher,
) -> None:
    """Publish while the lease holds; returns never, raises `LeaseLostError` or fatal errors."""
    relay = OutboxRelay(
        settings,
        client,
        state,
        still_leader=lease.held,
        publisher=publisher,
        tracing=configure_tracing("relay"),
    )
    db = client[settings.mongo.database]
    retention = OutboxRetention(
        client, settings.mongo, margin_s=settings.relay.recovery_margin_seconds
    )
    tasks = {
        asyncio.create_task(relay.run(), name="relay"),
        asyncio.create_task(_keep_lease(lease, client, state), name="relay-lease"),
        asyncio.create_task(
            watch_backlog(
                db[settings.mongo.outbox_collection], db[LEASE_COLLECTION], state, retention
            ),
            name="relay-backlog",
        ),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        first.result()  # raises what ended it
        raise FatalError(f"relay task {first.get_name()} ended unexpectedly")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Also on a fatal error or a clean stop: a standby need not wait for the expiry.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(lease.release())


async def _keep_lease(lease: MongoLease, client: MongoClient, state: RelayState) -> None:
    """Renew the lease every `lease.interval`; `LeaseLostError` when gone.

    The oplog window the status carries is measured beside the renewals, never between
    them: on a busy server that query can take longer than the lease has left, and a
    renewal waiting for it let a relay lose its own lease while catching up a backlog.
    """
    oplog: asyncio.Task[None] | None = None

    async def measure_oplog() -> None:
        state.oplog_window(await oplog_seconds_left(client, state.last_cluster_time))

    try:
        while True:
            await asyncio.sleep(lease.interval)
            await lease.renew()
            if oplog is None or oplog.done():
                oplog = asyncio.create_task(measure_oplog(), name="relay-oplog-window")
    finally:
        if oplog is not None:
            oplog.cancel()
            await asyncio.gather(oplog, return_exceptions=True)
