"""One active relay per name: a lease document in MongoDB, renewed while the relay works.

Collection `relay_leases` in the outbox database, one document per relay name:

| field | meaning |
|---|---|
| `_id` | the relay name (`OUTBOX_RELAY_NAME`) |
| `holder` | the holding process: `<host>:<pid>:<random>` |
| `expires_at` | the lease ends here unless renewed (renewed every `lease_ttl_seconds / 3`) |
| `acquired_at`, `updated_at` | when the holder took the lease, when it last renewed it |
| `role` | `active` while held; `released` after a clean stop |
| `last_checkpoint_time` | when the last checkpoint was committed to Kafka |
| `last_cluster_time` | the MongoDB cluster time (Timestamp) that checkpoint stands for |
| `last_event_id` | the last event id published |
| `events_published`, `events_dead_lettered`, `batches_committed` | counters of this holder |
| `history_lost_recoveries`, `duplicates_possible` | see the relay README |
| `oplog_seconds_left` | seconds of oplog history behind the checkpoint (null if unknown) |
| `collections` | what this relay publishes ([]: all); see `outbox_relay.ownership` |
| `position_time` | everything older is published; see `outbox_relay.backlog` |

The lease only decides who *works*; Kafka's transactional fencing (every holder uses the
same `transactional.id`) is what guarantees that a zombie can never commit. Expiry uses
the relays' own clocks: skew between hosts can delay a takeover, never break exactly-once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from infra.errors import PipelineError
from infra.naming import LEASES_COLLECTION
from outbox_relay.progress import RelayState

log = structlog.get_logger(__name__)

LEASE_COLLECTION = LEASES_COLLECTION


class LeaseLostError(PipelineError):
    """Another relay holds the lease now, or it could not be renewed before it expired."""


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class MongoLease:
    """Acquire, renew and release the lease of one relay name."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        *,
        name: str,
        ttl_seconds: float,
        state: RelayState,
        holder: str | None = None,
    ) -> None:
        self._coll = collection
        self.name = name
        self.ttl = ttl_seconds
        self.holder = holder or new_holder_id()
        self._state = state
        self._valid_until = 0.0  # monotonic; conservative: measured before the write

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def held(self) -> bool:
        """True while this process may still assume it holds the lease."""
        return time.monotonic() < self._valid_until

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        started = time.monotonic()
        now = datetime.now(UTC)
        try:
            await self._coll.update_one(
                {"_id": self.name, "$or": [{"holder": self.holder}, {"expires_at": {"$lt": now}}]},
                {
                    "$set": {
                        "holder": self.holder,
                        "expires_at": now + timedelta(seconds=self.ttl),
                        "acquired_at": now,
                        "updated_at": now,
                        **self._state.status_fields(),
                        "role": "active",
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError:
            self._state.dependency_up("mongodb")
            return False  # the document exists and someone else holds an unexpired lease
        except PyMongoError as e:
            log.warning("lease_acquire_failed", relay=self.name, error=str(e))
            self._state.dependency_down("mongodb", str(e))
            return False
        self._state.dependency_up("mongodb")
        self._valid_until = started + self.ttl
        return True

    async def wait_acquired(self) -> None:
        """Stand by until the lease is ours, polling every third of its TTL."""
        announced = False
        while not await self.try_acquire():
            if not announced:
                log.info("relay_standing_by", relay=self.name, holder=self.holder)
                announced = True
            await asyncio.sleep(self.interval)
        log.info("lease_acquired", relay=self.name, holder=self.holder)

    async def renew(self) -> None:
        """Extend the lease and publish the status fields; `LeaseLostError` if it is gone."""
        started = time.monotonic()
        now = datetime.now(UTC)
        try:
            result = await self._coll.update_one(
                {"_id": self.name, "holder": self.holder},
                {
                    "$set": {
                        "expires_at": now + timedelta(seconds=self.ttl),
                        "updated_at": now,
                        **self._state.status_fields(),
                        "role": "active",
                    }
                },
            )
        except PyMongoError as e:
            if not self.held():
                raise LeaseLostError(f"lease of {self.name!r} expired: {e}") from e
            log.warning("lease_renew_failed", relay=self.name, error=str(e))
            self._state.dependency_down("mongodb", str(e))
            return
        self._state.dependency_up("mongodb")
        if result.matched_count == 0:
            self._valid_until = 0.0
            raise LeaseLostError(f"lease of {self.name!r} is held by another relay")
        self._valid_until = started + self.ttl

    async def release(self) -> None:
        """Give the lease up at once (clean stop) so a standby takes over without waiting."""
        self._valid_until = 0.0
        now = datetime.now(UTC)
        try:
            await self._coll.update_one(
                {"_id": self.name, "holder": self.holder},
                {
                    "$set": {
                        "expires_at": now,
                        "updated_at": now,
                        **self._state.status_fields(),
                        "role": "released",
                    }
                },
            )
        except PyMongoError as e:
            log.warning("lease_release_failed", relay=self.name, error=str(e))
            return
        log.info("lease_released", relay=self.name, holder=self.holder)
