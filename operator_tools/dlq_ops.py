"""`outbox dlq list|redrive`: inspect dead-lettered events and send them back through Kafka.

The DLQ topic is a log: entries stay after a redrive. Which entries were re-driven (and
by whom) is recorded in the MongoDB collection `ops.dlq_redrives` (a name no REST
collection can have), so `list` shows each entry as pending or redriven and `status`
counts only the pending ones. A redrive produces the original key, value and headers
(plus `ce_replayed: true`) to the collection's event topic; if the event fails again
the stage dead-letters it anew, under a new DLQ id.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from infra.dead_letter import DeadLetter
from infra.envelope import (
    CE_AGGREGATEVERSION,
    CE_ID,
    CE_SOURCE,
    CE_SUBJECT,
    CE_TYPE,
    SOURCE_PREFIX,
    KafkaMessage,
    headers_dict,
)
from infra.kafka import read_to_end, topic_partitions
from infra.settings import KafkaSettings
from operator_tools.clients import OperatorClients
from operator_tools.reemitter import KafkaReemitter, mark_replayed

log = structlog.get_logger(__name__)

REDRIVES_COLLECTION = "ops.dlq_redrives"


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One dead letter as read from the DLQ topic, and whether it was re-driven."""

    letter: DeadLetter
    partition: int
    offset: int
    redriven_at: datetime | None = None

    @property
    def id(self) -> str:
        """The DLQ id, or partition:offset for a letter written without one."""
        return self.letter.dlq_id or f"{self.partition}:{self.offset}"

    @property
    def headers(self) -> dict[str, str]:
        return headers_dict([(k, v) for k, v in self.letter.original_headers])

    @property
    def event_id(self) -> str | None:
        return self.headers.get(CE_ID)

    @property
    def collection(self) -> str | None:
        source = self.headers.get(CE_SOURCE, "")
        return source.removeprefix(SOURCE_PREFIX) if source.startswith(SOURCE_PREFIX) else None

    def matches(self, wanted: set[str]) -> bool:
        """Selected by `--id`: its DLQ id or its event id."""
        return self.id in wanted or (self.event_id is not None and self.event_id in wanted)

    def target_topic(self, settings: KafkaSettings) -> str | None:
        """Where a redrive sends it: the event topic of its collection."""
        if self.collection:
            return settings.event_topic(self.collection)
        if re.match(settings.event_topic_pattern, self.letter.source_topic):
            return self.letter.source_topic
        return None

    def as_dict(self) -> dict[str, Any]:
        h = self.headers
        return {
            "id": self.id,
            "event_id": self.event_id,
            "collection": self.collection,
            "document_id": h.get(CE_SUBJECT),
            "version": h.get(CE_AGGREGATEVERSION),
            "type": h.get(CE_TYPE),
            "stage": self.letter.stage,
            "error": self.letter.error,
            "source": {
                "topic": self.letter.source_topic,
                "partition": self.letter.source_partition,
                "offset": self.letter.source_offset,
            },
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "redriven_at": self.redriven_at.isoformat() if self.redriven_at else None,
        }


def read_letters_blocking(settings: KafkaSettings) -> list[DlqEntry]:
    """Every committed message in the DLQ topic, from the beginning to its current end."""
    parts = topic_partitions(settings, [settings.dlq_topic])
    return [
        DlqEntry(
            DeadLetter.from_kafka(key=m.key, value=m.value, headers=m.headers),
            m.partition,
            m.offset,
        )
        for m in read_to_end(settings, parts, purpose="ops-dlq-reader")
    ]


async def list_entries(clients: OperatorClients) -> list[DlqEntry]:
    """Every dead letter, oldest first per partition, with its redrive time if any."""
    entries = await asyncio.to_thread(read_letters_blocking, clients.settings.kafka)
    if not entries:
        return []
    redrives = clients.db[REDRIVES_COLLECTION]
    done: dict[str, datetime] = {}
    async for raw in redrives.find({"_id": {"$in": [e.id for e in entries]}}):
        done[str(raw["_id"])] = raw["redriven_at"]
    return [
        DlqEntry(e.letter, e.partition, e.offset, done.get(e.id)) if e.id in done else e
        for e in entries
    ]


@dataclass
class RedriveResult:
    redriven: list[str]
    skipped: dict[str, str]  # id → why
    not_found: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"redriven": self.redriven, "skipped": self.skipped, "not_found": self.not_found}


def select(
    entries: Sequence[DlqEntry], ids: Sequence[str], *, everything: bool, again: bool = False
) -> tuple[list[DlqEntry], list[str]]:
    """Entries to re-drive, and the requested ids that matched nothing.

    Already re-driven entries are left out unless `again` (or named by `--id`).
    """
    if not ids and not everything:
        raise ValueError("say which entries to re-drive: --id ID (repeatable) or --all")
    wanted = set(ids)
    if everything:
        chosen = [e for e in entries if again or e.redriven_at is None]
        return chosen, []
    chosen = [e for e in entries if e.matches(wanted)]
    seen = {e.id for e in chosen} | {e.event_id for e in chosen if e.event_id}
    return chosen, sorted(wanted - seen)


async def redrive(
    clients: OperatorClients,
    *,
    ids: Sequence[str] = (),
    everything: bool = False,
    actor: str = "cli",
) -> RedriveResult:
    """Produce the selected dead letters to their event topics again, then record it."""
    entries = await list_entries(clients)
    chosen, not_found = select(entries, ids, everything=everything)
    result = RedriveResult(redriven=[], skipped={}, not_found=not_found)
    kafka = clients.settings.kafka
    events: list[KafkaMessage] = []
    sent: list[DlqEntry] = []
    for entry in chosen:
        topic = entry.target_topic(kafka)
        if topic is None:
            result.skipped[entry.id] = "no ce_source header and no event source topic"
            continue
        if entry.letter.value is None and entry.headers.get(CE_TYPE, "").endswith(".deleted"):
            pass  # a delete carries no value: nothing was dropped
        elif entry.letter.value is None:
            result.skipped[entry.id] = "the dead letter kept no value (too large?)"
            continue
        events.append(
            KafkaMessage(
                topic=topic,
                key=entry.letter.key,
                value=entry.letter.value,
                headers=mark_replayed(entry.letter.original_headers),
                event_id=entry.headers.get(CE_ID, ""),
            )
        )
        sent.append(entry)
    if events:
        publisher = KafkaReemitter(kafka)
        await publisher.publish(events)
        await publisher.flush()
        now = datetime.now(UTC)
        redrives = clients.db[REDRIVES_COLLECTION]
        for entry in sent:
            await redrives.update_one(
                {"_id": entry.id},
                {"$set": {"redriven_at": now, "actor": actor, "event_id": entry.event_id}},
                upsert=True,
            )
            log.info(
                "dead_letter_redriven",
                actor=actor,
                dlq_id=entry.id,
                event_id=entry.event_id,
                collection=entry.collection,
            )
            result.redriven.append(entry.id)
    return result
