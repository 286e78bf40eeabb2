"""`outbox replay`: re-publish stored outbox records with their original event ids.

Records are read from the `outbox` collection (retained for `OUTBOX_MONGO_OUTBOX_TTL_DAYS`)
in commit-time order and produced to their event topics exactly as the relay published
them, plus `ce_replayed: true`. The indexer's external versions turn every replayed event
into a no-op for a document Elasticsearch already holds at that version or newer, so a
replay changes no indexed version; downstream consumers de-duplicate on `ce_id` / `id`.
Interrupting is safe (what was handed to Kafka is flushed) and so is running it again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from infra.envelope import KafkaMessage, OutboxRecord
from operator_tools.clients import OperatorClients
from operator_tools.progress_display import NoProgress, Progress
from operator_tools.reemitter import KafkaReemitter, replay_of
from operator_tools.throttle import RateLimiter

log = structlog.get_logger(__name__)

BATCH = 500


class ReplayRequestError(ValueError):
    """The filters do not make sense (nothing selected, `--since` after `--until`, ...)."""


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which outbox records to replay; an empty filter needs `everything=True` (`--all`)."""

    collection: str | None = None
    ids: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    everything: bool = False

    def validate(self) -> None:
        narrowed = self.collection or self.ids or self.since or self.until
        if not narrowed and not self.everything:
            raise ReplayRequestError(
                "say what to replay: --collection, --id, --since/--until, or --all for everything"
            )
        if self.ids and not self.collection:
            raise ReplayRequestError("--id needs --collection (ids are per collection)")
        for t in (self.since, self.until):
            if t is not None and t.tzinfo is None:
                raise ReplayRequestError(
                    "--since/--until need a time zone (e.g. 2026-01-01T00:00Z)"
                )
        if self.since and self.until and self.since >= self.until:
            raise ReplayRequestError("--since must be before --until")

    def mongo_query(self) -> dict[str, Any]:
        """The `outbox` collection query; `since` is inclusive, `until` exclusive."""
        query: dict[str, Any] = {}
        if self.collection:
            query["collection"] = self.collection
        if self.ids:
            query["document_id"] = {"$in": list(self.ids)}
        window: dict[str, datetime] = {}
        if self.since:
            window["$gte"] = self.since
        if self.until:
            window["$lt"] = self.until
        if window:
            query["time"] = window
        return query

    def matches(self, record: OutboxRecord) -> bool:
        """The same selection as `mongo_query`, for one record."""
        if self.collection and record.collection != self.collection:
            return False
        if self.ids and record.document_id not in self.ids:
            return False
        if self.since and record.time < self.since:
            return False
        return not (self.until and record.time >= self.until)

    def describe(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "ids": list(self.ids),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "all": self.everything,
        }


@dataclass
class ReplayResult:
    """What a replay did (or, with `dry_run`, would do)."""

    matched: int
    published: int = 0
    dry_run: bool = False
    interrupted: bool = False
    by_collection: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "published": self.published,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "by_collection": dict(sorted(self.by_collection.items())),
        }


async def replay(
    clients: OperatorClients,
    selection: ReplayFilter,
    *,
    dry_run: bool = False,
    rate: float | None = None,
    progress: Progress | None = None,
    actor: str = "cli",
) -> ReplayResult:
    """Re-publish the selected outbox records (see the module docstring)."""
    selection.validate()
    progress = progress or NoProgress()
    settings = clients.settings
    outbox = clients.db[settings.mongo.outbox_collection]
    query = selection.mongo_query()
    total = await outbox.count_documents(query)
    result = ReplayResult(matched=total, dry_run=dry_run)
    log.info("replay_started", actor=actor, dry_run=dry_run, matched=total, **selection.describe())
    progress.start("dry run" if dry_run else "replaying", total)
    counts: Counter[str] = Counter()
    limiter = RateLimiter(rate)
    publisher = None if dry_run else KafkaReemitter(settings.kafka)
    batch: list[KafkaMessage] = []

    async def send() -> None:
        assert publisher is not None
        await limiter.acquire(len(batch))
        await publisher.publish(batch)
        result.published += len(batch)
        progress.advance(len(batch))
        batch.clear()

    cursor = outbox.find(query).sort([("time", 1), ("version", 1)]).batch_size(BATCH)
    try:
        async for raw in cursor:
            record = OutboxRecord.from_mongo(raw)
            counts[record.collection] += 1
            if publisher is None:
                progress.advance()
                continue
            batch.append(replay_of(record, settings.kafka))
            if len(batch) >= limiter.batch_size(BATCH):
                await send()
        if batch:
            await send()
    except asyncio.CancelledError:
        result.interrupted = True
        raise
    finally:
        await cursor.close()
        result.by_collection = dict(counts)
        if publisher is not None:
            # Even when interrupted: what was handed over is delivered before we exit.
            await publisher.flush()
        log.info("replay_finished", actor=actor, **result.as_dict())
    return result
