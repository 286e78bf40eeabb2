"""The `outbox` change stream: inserts only, read in batches by size and time.

`StreamTail` reads it in a task of its own. A batch ends when it holds `batch_max_events`
events, when `batch_max_ms` passed since its first event and the server has nothing more
at once, or, on a quiet outbox, when a heartbeat is due. After an empty `getMore` the
stream's resume token is the server's post-batch resume token: it moves on with the oplog
even when no outbox record was written, which is what keeps an idle relay's position
inside the oplog.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from infra.mongo import MongoClient
from infra.settings import RelaySettings
from outbox_relay.scope import CollectionScope

CHANGE_STREAM_HISTORY_LOST = 286
CHANGE_STREAM_FATAL = 280
INVALID_RESUME_TOKEN = 260
UNAUTHORIZED = 13


def is_history_lost(e: PyMongoError) -> bool:
    """The stream cannot resume from the checkpoint's token: recover from the outbox.

    Code 286 (history lost), 280 "resume token not found", 260 InvalidResumeToken, or a
    server refusing the token itself (SecantusDB answers 13 when a post-batch token it
    minted at a DDL event of the outbox, e.g. the relay's own `collMod`, is handed back).
    A recovery from the checkpoint's time is correct whatever made the token unusable.
    """
    if not isinstance(e, OperationFailure):
        return False
    if e.code in (CHANGE_STREAM_HISTORY_LOST, INVALID_RESUME_TOKEN):
        return True
    text = str(e).lower()
    if e.code == CHANGE_STREAM_FATAL:
        return "resume" in text and "not found" in text
    return e.code == UNAUTHORIZED and "resume token" in text


def outbox_pipeline(scope: CollectionScope) -> list[dict[str, Any]]:
    """Inserts only; optionally only this relay's share of the collections."""
    match: dict[str, Any] = {"operationType": "insert"}
    if not scope.is_all:
        match["fullDocument.collection"] = scope.mongo_filter()["collection"]
    # No `$project` down to `_id`/`clusterTime`/`fullDocument`: measured on SecantusDB it
    # costs the server more than the smaller events save (13k vs 20k events/s read).
    return [{"$match": match}]


@dataclass
class StreamBatch:
    """Changes read from the stream and the position right after them."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    resume_token: dict[str, Any] | None = None
    cluster_time: Timestamp | None = None


async def open_stream(
    outbox: AsyncCollection[dict[str, Any]],
    settings: RelaySettings,
    session: AsyncClientSession,
    *,
    resume_after: dict[str, Any] | None = None,
    start_at: Timestamp | None = None,
) -> AsyncChangeStream[dict[str, Any]]:
    """Open the stream after `resume_after`, at `start_at`, or (neither) from now."""
    kwargs: dict[str, Any] = {}
    if resume_after is not None:
        kwargs["resume_after"] = resume_after
    elif start_at is not None:
        kwargs["start_at_operation_time"] = start_at
    return await outbox.watch(
        outbox_pipeline(CollectionScope.of(settings.collections)),
        batch_size=settings.batch_max_events,
        max_await_time_ms=max(10, min(settings.batch_max_ms, 1000)),
        session=session,
        **kwargs,
    )


def token_time(token: dict[str, Any] | None) -> Timestamp | None:
    """The cluster time inside a MongoDB resume token, None if it is not in that format.

    MongoDB's `_data` is a hex KeyString whose first value is the token's cluster time:
    type byte 0x82, then the timestamp as 8 big-endian bytes (seconds, increment). Other
    servers may use their own opaque format; the caller then has no token time.
    """
    data = None if token is None else token.get("_data")
    if not isinstance(data, str) or len(data) < 18 or data[:2].lower() != "82":
        return None
    try:
        raw = int(data[2:18], 16)
    except ValueError:
        return None
    return Timestamp(raw >> 32, raw & 0xFFFFFFFF)


def heartbeat_position(
    token: dict[str, Any] | None,
    *,
    floor: Timestamp | None,
    reply_time: Timestamp | None,
    previous_reply_time: Timestamp | None,
) -> Timestamp | None:
    """The oplog time an empty `getMore`'s post-batch resume token stands for.

    Never the reply's own operation time: a server may report a time past what the
    stream has scanned, and a recovery's skip window would close too early. The token's
    own time when it can be read and is plausible (not before `floor`, where the stream
    already was; not past the reply); otherwise the previous reply's operation time,
    which the stream had reached by the time it scanned again; never below `floor`.
    """
    inside = token_time(token)
    if (
        inside is not None
        and (floor is None or inside >= floor)
        and (reply_time is None or inside <= reply_time)
    ):
        return inside
    candidates = [t for t in (floor, previous_reply_time) if t is not None]
    return max(candidates, default=None)


class StreamTail:
    """Reads the change stream in a task of its own, into a bounded buffer of batches.

    The reader keeps the server-side cursor moving while the relay is busy elsewhere (a
    commit, or a recovery's read-back and scan), so a recovery slower than the oplog
    window still finds its stream position alive. The buffer holds up to
    `capacity_events` events (consecutive heartbeats count once); when it is full the
    reader waits. An error of the stream is raised by `next()` once the batches read
    before it are consumed.
    """

    def __init__(
        self,
        stream: AsyncChangeStream[dict[str, Any]],
        session: AsyncClientSession,
        settings: RelaySettings,
        *,
        capacity_events: int,
        position: Timestamp | None = None,
    ) -> None:
        self._stream = stream
        self._position = position  # where the stream is: it never goes back
        self._session = session
        self._settings = settings
        self._capacity = max(capacity_events, settings.batch_max_events)
        self._batches: deque[StreamBatch] = deque()
        self._events = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._error: BaseException | None = None
        self._deferred_error: BaseException | None = None
        # Operation times of the last two empty getMores (see `heartbeat_position`).
        self._previous_reply: Timestamp | None = None
        self._last_reply: Timestamp | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-stream-tail")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def next(self) -> StreamBatch:
        """The next batch in stream order (waits for one); raises the stream's error."""
        while not self._batches:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        batch = self._batches.popleft()
        self._events -= len(batch.changes)
        self._room.set()
        return batch

    async def _run(self) -> None:
        heartbeat_due = time.monotonic() + self._settings.heartbeat_seconds
        try:
            while True:
                while self._events >= self._capacity:
                    self._room.clear()
                    await self._room.wait()
                batch = await self._read_batch(heartbeat_due)
                heartbeat_due = time.monotonic() + self._settings.heartbeat_seconds
                if not batch.changes and self._batches and not self._batches[-1].changes:
                    self._batches[-1] = batch  # a newer heartbeat replaces an unread one
                else:
                    self._batches.append(batch)
                    self._events += len(batch.changes)
                self._ready.set()
                if self._deferred_error is not None:
                    self._error = self._deferred_error  # raised once this batch is consumed
                    return
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._error = e
            self._ready.set()

    async def _read_batch(self, heartbeat_due: float) -> StreamBatch:
        """Read up to one batch; an empty batch (a heartbeat) at `heartbeat_due`.

        A batch ends when it holds `batch_max_events` events, when `batch_max_ms` passed
        since its first event and the server has nothing more at once, or, on a quiet
        outbox, at `heartbeat_due` (a `time.monotonic()` instant).
        """
        settings = self._settings
        stream = self._stream
        batch = StreamBatch()
        deadline = 0.0
        last_was_change = False
        while len(batch.changes) < settings.batch_max_events:
            try:
                change = await stream.try_next()
            except PyMongoError as e:
                if not batch.changes:
                    raise
                self._deferred_error = e  # hand over what was read first
                break
            now = time.monotonic()
            if change is not None:
                if not batch.changes:
                    deadline = now + settings.batch_max_ms / 1000
                batch.changes.append(change)
                batch.cluster_time = change.get("clusterTime")
                last_was_change = True
                if now >= deadline:
                    break
                continue
            last_was_change = False
            self._previous_reply, self._last_reply = self._last_reply, self._session.operation_time
            if batch.changes and now >= deadline:
                break
            if not batch.changes and now >= heartbeat_due:
                break
        token = stream.resume_token
        batch.resume_token = None if token is None else dict(token)
        if not last_was_change:
            # The post-batch resume token: where the stream is, past the last change.
            batch.cluster_time = heartbeat_position(
                batch.resume_token,
                floor=batch.cluster_time or self._position,
                reply_time=self._last_reply,
                previous_reply_time=self._previous_reply,
            )
        if batch.cluster_time is not None:
            self._position = batch.cluster_time
        return batch


async def operation_time(client: MongoClient) -> Timestamp:
    """The cluster's current operation time (where a new stream would start)."""
    reply = await client.admin.command("ping")
    ts = reply.get("operationTime") or reply.get("$clusterTime", {}).get("clusterTime")
    if not isinstance(ts, Timestamp):
        raise OperationFailure("the server reported no operationTime (not a replica set?)")
    return ts


async def oplog_seconds_left(client: MongoClient, cluster_time: Timestamp | None) -> float | None:
    """Seconds of oplog between its oldest entry and `cluster_time`, where the server tells."""
    if cluster_time is None:
        return None
    try:
        oldest = await client.local["oplog.rs"].find_one(
            {}, projection={"ts": 1}, sort=[("$natural", 1)]
        )
    except PyMongoError:
        return None  # not readable here (permissions, a server without local.oplog.rs)
    if not oldest or not isinstance(oldest.get("ts"), Timestamp):
        return None
    return float(max(0, cluster_time.time - oldest["ts"].time))
