"""The dead-letter message keeps the original and adds why and where from."""

from __future__ import annotations

from infra.dead_letter import DeadLetter
from infra.envelope import headers_dict


def test_a_dead_letter_round_trips_and_keeps_original_headers() -> None:
    letter = DeadLetter(
        key=b"k",
        value=b"{bad",
        original_headers=[("ce_id", b"e1"), ("x", b"y")],
        error="value is not JSON",
        stage="indexer",
        source_topic="outbox.event.books",
        source_partition=2,
        source_offset=41,
    )
    headers = letter.kafka_headers()
    h = headers_dict(list(headers))
    assert h["ce_id"] == "e1"
    assert h["x"] == "y"
    assert h["dlq_error"] == "value is not JSON"
    decoded = DeadLetter.from_kafka(key=b"k", value=b"{bad", headers=list(headers))
    assert decoded.original_headers == [("ce_id", b"e1"), ("x", b"y")]
    assert (decoded.stage, decoded.source_topic, decoded.source_partition) == (
        "indexer",
        "outbox.event.books",
        2,
    )
    assert decoded.source_offset == 41
    assert decoded.dlq_id


def test_redriving_a_dead_letter_twice_does_not_stack_headers() -> None:
    first = DeadLetter(b"k", b"v", [("ce_id", b"e")], "boom", "indexer", "t", 0, 1)
    again = DeadLetter.from_kafka(key=b"k", value=b"v", headers=list(first.kafka_headers()))
    second = DeadLetter(b"k", b"v", again.original_headers, "boom2", "indexer", "t", 0, 2)
    names = [name for name, _ in second.kafka_headers()]
    assert names.count("dlq_error") == 1
    assert names.count("ce_id") == 1
