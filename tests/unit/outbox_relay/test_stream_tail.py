"""The stream tail's buffer: it keeps reading ahead, up to its capacity, and loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from infra.settings import RelaySettings
from outbox_relay.change_stream import StreamTail


class ScriptedStream:
    """Stands in for a change stream cursor: changes from a script, then nothing or an error."""

    def __init__(self, changes: int, error: Exception | None = None) -> None:
        self._left = [
            {"_id": {"_data": f"t{i}"}, "clusterTime": Timestamp(100 + i, 1), "fullDocument": {}}
            for i in range(changes)
        ]
        self._error = error
        self.reads = 0
        self.resume_token: dict[str, Any] | None = None

    async def try_next(self) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        self.reads += 1
        if self._left:
            change = self._left.pop(0)
            self.resume_token = change["_id"]
            return change
        if self._error is not None:
            raise self._error
        return None


class Session:
    operation_time = Timestamp(1, 1)


def relay(**kw: Any) -> RelaySettings:
    return RelaySettings(batch_max_events=10, batch_max_ms=1, heartbeat_seconds=60, **kw)


async def test_the_tail_reads_ahead_only_up_to_its_capacity() -> None:
    stream = ScriptedStream(changes=100)
    tail = StreamTail(stream, Session(), relay(), capacity_events=30)  # type: ignore[arg-type]
    tail.start()
    try:
        for _ in range(200):
            await asyncio.sleep(0)
        assert stream.reads <= 30 + 1  # one read may be under way when the buffer fills
        first = await tail.next()
        assert [c["_id"]["_data"] for c in first.changes][:1] == ["t0"]
    finally:
        await tail.stop()


async def test_a_stream_error_comes_after_every_batch_read_before_it() -> None:
    """History lost while the relay scanned: what the tail already read is still published."""
    lost = OperationFailure("history lost", code=286)
    stream = ScriptedStream(changes=25, error=lost)
    tail = StreamTail(stream, Session(), relay(), capacity_events=1000)  # type: ignore[arg-type]
    tail.start()
    seen: list[str] = []
    try:
        while len(seen) < 25:
            batch = await tail.next()
            seen += [c["_id"]["_data"] for c in batch.changes]
        with pytest.raises(OperationFailure):
            await tail.next()
    finally:
        await tail.stop()
    assert seen == [f"t{i}" for i in range(25)]
