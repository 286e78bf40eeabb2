"""The relay renews its lease on its own cadence, whatever else its status needs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from outbox_relay import service
from outbox_relay.progress import RelayState


class CountingLease:
    interval = 0.001

    def __init__(self) -> None:
        self.renewals = 0

    async def renew(self) -> None:
        self.renewals += 1


async def test_a_hanging_oplog_query_does_not_hold_back_lease_renewals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    never = asyncio.Event()
    asked = 0

    async def hanging_oplog_query(_client: Any, _cluster_time: Any) -> float:
        nonlocal asked
        asked += 1
        await never.wait()  # a server busy for longer than the lease has left
        return 0.0

    monkeypatch.setattr(service, "oplog_seconds_left", hanging_oplog_query)
    lease = CountingLease()
    keeper = asyncio.create_task(
        service._keep_lease(lease, None, RelayState("relay"))  # type: ignore[arg-type]
    )
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while lease.renewals < 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert lease.renewals >= 5
        assert asked == 1  # one query at a time, not one per renewal
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
