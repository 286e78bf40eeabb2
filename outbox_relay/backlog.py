"""The outbox backlog: what no committed Kafka transaction holds yet, measured every few seconds.

Definitions (the ones `outbox status` documents):

- **backlog** of a relay: outbox records of its collections whose `time` is later than its
  position (`outbox_relay.checkpoint.checkpoint_position`);
- **unowned**: outbox records of collections no registered relay publishes
  (`outbox_relay.ownership`). Nobody will ever publish them, so they count as backlog
  and turn every relay's readiness red until a relay's collection list covers them;
- **oldest unpublished age**: now minus the `time` of the oldest record of either kind.

The counts are indexed queries in the relay's own task, never per event, and also decide
when the outbox TTL may change (`outbox_relay.retention`). Record times and cluster times
both come from MongoDB's clock, so the backlog is exact to about a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from outbox_relay.ownership import Registration, read_registrations, unowned
from outbox_relay.progress import RelayState
from outbox_relay.retention import OutboxRetention
from outbox_relay.scope import CollectionScope

log = structlog.get_logger(__name__)

BACKLOG_POLL_S = 5.0
# A count costs the server time proportional to the backlog (SecantusDB fetches every
# matching record): wait at least this many times as long as the last count took, so
# a big catch-up never spends more than a few percent of the server on counting.
COST_FACTOR = 20.0
# No position yet (first start): every retained record, still through the `time` index.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def backlog_query(position: datetime | None, scope: CollectionScope) -> dict[str, Any]:
    """The filter of a relay's backlog (see the module docstring)."""
    return {"time": {"$gt": position if position is not None else EPOCH}, **scope.mongo_filter()}


@dataclass
class BacklogMeasurement:
    """One measurement: this relay's backlog, the unowned records, the oldest of either."""

    backlog: int = 0
    unowned: int = 0
    unowned_collections: list[str] = field(default_factory=list)
    oldest_unpublished: datetime | None = None

    def oldest_age_s(self, now: datetime) -> float | None:
        if self.oldest_unpublished is None:
            return None
        return max(0.0, (now - self.oldest_unpublished).total_seconds())


async def oldest_time(
    outbox: AsyncCollection[dict[str, Any]], query: dict[str, Any]
) -> datetime | None:
    """The `time` of the oldest record matching `query`, None when there is none."""
    raw = await outbox.find_one(query, {"time": 1}, sort=[("time", 1)])
    if raw is None or not isinstance(raw.get("time"), datetime):
        return None
    found: datetime = raw["time"]
    return found if found.tzinfo else found.replace(tzinfo=UTC)


async def measure(
    outbox: AsyncCollection[dict[str, Any]],
    me: Registration,
    others: Iterable[Registration],
) -> BacklogMeasurement:
    """This relay's backlog and the unowned records (see the module docstring)."""
    result = BacklogMeasurement()
    own_query = backlog_query(me.position_time, me.scope)
    result.backlog = await outbox.count_documents(own_query)
    oldest: list[datetime] = []
    if result.backlog:
        found = await oldest_time(outbox, own_query)
        oldest += [found] if found is not None else []
    nobody = unowned([me, *others])
    if not nobody.is_empty:
        query = nobody.mongo_filter()
        result.unowned = await outbox.count_documents(query)
        if result.unowned:
            result.unowned_collections = sorted(
                str(c) for c in await outbox.distinct("collection", query)
            )
            found = await oldest_time(outbox, query)
            oldest += [found] if found is not None else []
    result.oldest_unpublished = min(oldest, default=None)
    return result


async def oldest_unpublished_of(
    outbox: AsyncCollection[dict[str, Any]], regs: Iterable[Registration]
) -> datetime | None:
    """The oldest record any of these relays has not published yet."""
    found = [await oldest_time(outbox, backlog_query(reg.position_time, reg.scope)) for reg in regs]
    return min((t for t in found if t is not None), default=None)


async def watch_backlog(
    outbox: AsyncCollection[dict[str, Any]],
    leases: AsyncCollection[dict[str, Any]],
    state: RelayState,
    retention: OutboxRetention | None = None,
    *,
    interval_s: float = BACKLOG_POLL_S,
) -> None:
    """Measure every `interval_s` until cancelled; MongoDB errors go to readiness.

    While the outbox TTL is not yet the setting, each round also tells `retention` the
    age of the oldest record *any* relay has not published, so the change happens only
    when it deletes nothing unpublished.
    """
    while True:
        started = time.monotonic()
        try:
            me = Registration(state.name, state.scope, state.position_time)
            others = [r for r in await read_registrations(leases) if r.relay != state.name]
            measured = await measure(outbox, me, others)
            now = datetime.now(UTC)
            if retention is not None and not retention.settled and state.position_known:
                theirs = await oldest_unpublished_of(outbox, others)
                everyone = [t for t in (measured.oldest_unpublished, theirs) if t is not None]
                age = max(0.0, (now - min(everyone)).total_seconds()) if everyone else 0.0
                await retention.apply(age)
        except PyMongoError as e:
            log.warning("backlog_count_failed", error=str(e))
            state.dependency_down("mongodb", str(e))
        else:
            state.dependency_up("mongodb")
            state.backlog_measured(
                measured.backlog,
                unowned=measured.unowned,
                unowned_collections=measured.unowned_collections,
                oldest_unpublished_age_s=measured.oldest_age_s(now),
            )
        await asyncio.sleep(max(interval_s, COST_FACTOR * (time.monotonic() - started)))
