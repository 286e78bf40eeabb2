"""The outbox backlog: records newer than the relay's position, counted every few seconds.

Definition (the one `outbox status` documents): outbox records of the relay's collections
whose `time` is later than the relay's position — the later of the outbox time of the last
published record and, in stream mode, the checkpoint's oplog time. The count is an
indexed `count_documents` on `time` (the TTL index), in the relay's own task, never per
event. Exact to about a second plus the clock skew between the API hosts and MongoDB.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from outbox_relay.progress import RelayState

log = structlog.get_logger(__name__)

BACKLOG_POLL_S = 5.0
# A count costs the server time proportional to the backlog (SecantusDB fetches every
# matching record): wait at least this many times as long as the last count took, so
# a big catch-up never spends more than a few percent of the server on counting.
COST_FACTOR = 20.0
# No position yet (first start): every retained record, still through the `time` index.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def backlog_query(position: datetime | None, collections: list[str]) -> dict[str, Any]:
    """The filter of the backlog count (see the module docstring)."""
    query: dict[str, Any] = {"time": {"$gt": position if position is not None else EPOCH}}
    if collections:
        query["collection"] = {"$in": list(collections)}
    return query


async def watch_backlog(
    outbox: AsyncCollection[dict[str, Any]],
    collections: list[str],
    state: RelayState,
    *,
    interval_s: float = BACKLOG_POLL_S,
) -> None:
    """Measure the backlog every `interval_s` until cancelled; MongoDB errors go to readiness."""
    while True:
        started = time.monotonic()
        try:
            count = await outbox.count_documents(backlog_query(state.position_time, collections))
        except PyMongoError as e:
            log.warning("backlog_count_failed", error=str(e))
            state.dependency_down("mongodb", str(e))
        else:
            state.dependency_up("mongodb")
            state.backlog_measured(count)
        await asyncio.sleep(max(interval_s, COST_FACTOR * (time.monotonic() - started)))
