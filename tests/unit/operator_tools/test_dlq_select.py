"""Choosing dead letters to re-drive."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.dead_letter import DeadLetter
from infra.envelope import EventType, OutboxRecord
from infra.settings import KafkaSettings
from operator_tools.dlq_ops import DlqEntry, select


def entry(n: int, *, redriven: bool = False) -> DlqEntry:
    record = OutboxRecord(
        event_id=f"ev{n}",
        collection="books",
        document_id=f"d{n}",
        version=1,
        type=EventType.CREATED,
        payload={"n": n},
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    letter = DeadLetter.from_kafka(
        key=record.kafka_key(),
        value=record.kafka_value(),
        headers=list(
            DeadLetter(
                key=record.kafka_key(),
                value=record.kafka_value(),
                original_headers=record.kafka_headers(),
                error="boom",
                stage="indexer",
                source_topic="ns.event.books",
                dlq_id=f"dlq{n}",
            ).kafka_headers()
        ),
    )
    return DlqEntry(letter, 0, n, datetime(2026, 1, 2, tzinfo=UTC) if redriven else None)


def test_all_selects_only_pending_entries() -> None:
    """--all re-drives what was not re-driven yet."""
    entries = [entry(1), entry(2, redriven=True), entry(3)]
    chosen, missing = select(entries, [], everything=True)
    assert [e.id for e in chosen] == ["dlq1", "dlq3"]
    assert missing == []


def test_ids_match_dlq_ids_or_event_ids_and_unknown_ones_are_reported() -> None:
    """--id takes either id; an id that matches nothing is named back."""
    entries = [entry(1), entry(2, redriven=True)]
    chosen, missing = select(entries, ["dlq1", "ev2", "nope"], everything=False)
    assert [e.id for e in chosen] == ["dlq1", "dlq2"]
    assert missing == ["nope"]
    with pytest.raises(ValueError, match="--all"):
        select(entries, [], everything=False)


def test_an_entry_goes_back_to_its_collection_topic() -> None:
    """The target topic comes from ce_source, in this deployment's namespace."""
    e = entry(1)
    assert e.collection == "books"
    assert e.target_topic(KafkaSettings(namespace="ns")) == "ns.event.books"
    assert e.as_dict()["error"] == "boom"
