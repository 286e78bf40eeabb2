"""The relay checkpoint: where the relay is in the outbox, committed with the events it covers.

One record per relay name (the Kafka key) in that name's own compacted topic
`<namespace>.relay.<name>.checkpoints`, written in the same Kafka transaction as the batch
of events it covers and by no other producer; a read_committed reader therefore sees a
checkpoint exactly when it sees those events, and no other relay's open transaction can
hide it. (Before the per-name topics, every name shared `<namespace>.relay.checkpoints`;
a relay with no checkpoint of its own reads its last one from there once.)

Two modes:

- `stream`: resume the change stream after `resume_token` (the change stream's
  post-batch resume token); `cluster_time` is the oplog time it stands for.
- `recovering`: the relay was re-publishing from the retained outbox collection after
  the oplog lost its position (or on first start). A restart redoes that recovery from
  `recover_from` (None: every retained record); what Kafka already holds is skipped.

`collections` is the relay's collection list the position stands for ([]: every
collection; None: a format-1 checkpoint, written before the list was recorded). When the
configured list gains a collection, the position says nothing about that collection's
history: the relay recovers it from the retained outbox instead of resuming.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from bson import json_util
from bson.timestamp import Timestamp

CHECKPOINT_FORMAT = 2
# Format 1 (no `collections`) is still read: the legacy shared topic holds it.
READABLE_FORMATS = frozenset({1, 2})


class CheckpointMode(StrEnum):
    STREAM = "stream"
    RECOVERING = "recovering"


class CheckpointDecodeError(ValueError):
    """A checkpoint record this relay cannot read (another format or garbage)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The committed position of one relay (see the module docstring)."""

    relay: str
    mode: CheckpointMode
    resume_token: dict[str, Any] | None = None
    cluster_time: Timestamp | None = None
    recover_from: datetime | None = None
    last_event_id: str | None = None
    events_total: int = 0
    written_at: datetime | None = None
    collections: tuple[str, ...] | None = ()

    @classmethod
    def initial(cls, relay: str, collections: tuple[str, ...] = ()) -> Checkpoint:
        """No checkpoint yet: publish every retained outbox record Kafka does not hold."""
        return cls(
            relay=relay, mode=CheckpointMode.RECOVERING, recover_from=None, collections=collections
        )

    @property
    def wall_time(self) -> datetime | None:
        """The cluster time as a UTC datetime (second precision), None if unknown."""
        return None if self.cluster_time is None else self.cluster_time.as_datetime()

    def advanced(
        self,
        *,
        resume_token: dict[str, Any] | None,
        cluster_time: Timestamp | None,
        last_event_id: str | None,
        published: int,
        now: datetime,
    ) -> Checkpoint:
        """The next stream-mode checkpoint after a batch of `published` events."""
        return replace(
            self,
            mode=CheckpointMode.STREAM,
            resume_token=resume_token,
            cluster_time=cluster_time,
            recover_from=None,
            last_event_id=last_event_id or self.last_event_id,
            events_total=self.events_total + published,
            written_at=now,
        )

    def recovering(self, *, last_event_id: str | None, published: int, now: datetime) -> Checkpoint:
        """The same position with progress counted (a recovery batch, a skip-window batch)."""
        return replace(
            self,
            last_event_id=last_event_id or self.last_event_id,
            events_total=self.events_total + published,
            written_at=now,
        )

    def recovery_from(
        self, recover_from: datetime | None, *, collections: tuple[str, ...] | None
    ) -> Checkpoint:
        """A recovering checkpoint: a restart re-publishes what Kafka lacks from `recover_from`."""
        return replace(
            self, mode=CheckpointMode.RECOVERING, recover_from=recover_from, collections=collections
        )

    def kafka_key(self) -> bytes:
        return self.relay.encode()

    def kafka_value(self) -> bytes:
        return encode_checkpoint(self)


def checkpoint_position(cp: Checkpoint, last_record_time: datetime | None) -> datetime | None:
    """The outbox time up to which every record is in Kafka, per `cp` (None: nothing known).

    Stream mode: the later of the last published record's `time` and the checkpoint's
    oplog time (heartbeats move it on while the outbox is idle). Recovering: its
    `recover_from` — a recovery publishes in document order, not time order, so the time
    of the last record it published says nothing about the ones before it.
    """
    if cp.mode is CheckpointMode.RECOVERING:
        return cp.recover_from
    candidates = [t for t in (last_record_time, cp.wall_time) if t is not None]
    return max(candidates, default=None)


def encode_checkpoint(cp: Checkpoint) -> bytes:
    """JSON; the resume token as canonical extended JSON so any server's token round-trips."""
    body: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "relay": cp.relay,
        "mode": cp.mode.value,
        "resume_token": None
        if cp.resume_token is None
        else json_util.dumps(cp.resume_token, json_options=json_util.CANONICAL_JSON_OPTIONS),
        "cluster_time": None
        if cp.cluster_time is None
        else {"t": cp.cluster_time.time, "i": cp.cluster_time.inc},
        "recover_from": None if cp.recover_from is None else cp.recover_from.isoformat(),
        "last_event_id": cp.last_event_id,
        "events_total": cp.events_total,
        "written_at": None if cp.written_at is None else cp.written_at.isoformat(),
        "collections": None if cp.collections is None else list(cp.collections),
    }
    return orjson.dumps(body)


def decode_checkpoint(raw: bytes) -> Checkpoint:
    """The inverse of `encode_checkpoint`; `CheckpointDecodeError` for anything else."""
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict) or body.get("format") not in READABLE_FORMATS:
            raise CheckpointDecodeError(f"unknown checkpoint format in {raw[:80]!r}")
        token_text = body.get("resume_token")
        token = None if token_text is None else json_util.loads(token_text)
        ct = body.get("cluster_time")
        collections = body.get("collections") if body["format"] >= 2 else None
        return Checkpoint(
            relay=str(body["relay"]),
            mode=CheckpointMode(body["mode"]),
            resume_token=token,
            cluster_time=None if ct is None else Timestamp(int(ct["t"]), int(ct["i"])),
            recover_from=_parse_dt(body.get("recover_from")),
            last_event_id=body.get("last_event_id"),
            events_total=int(body.get("events_total", 0)),
            written_at=_parse_dt(body.get("written_at")),
            collections=None if collections is None else tuple(str(c) for c in collections),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointDecodeError):
            raise
        raise CheckpointDecodeError(f"bad checkpoint record: {e}") from e


def _parse_dt(text: str | None) -> datetime | None:
    if text is None:
        return None
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)
