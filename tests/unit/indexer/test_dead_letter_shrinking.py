"""A dead letter Kafka refuses as too large is shrunk, never dropped."""

from __future__ import annotations

from indexer.dlq_writer import shrunk
from infra.dead_letter import DeadLetter


def test_a_too_large_dead_letter_loses_its_value_then_its_original_headers_never_its_error() -> (
    None
):
    letter = DeadLetter(
        key=b"k",
        value=b"x" * 10,
        original_headers=[("ce_id", b"e1")],
        error="value is not JSON",
        stage="indexer",
        source_topic="t",
        source_partition=1,
        source_offset=7,
    )
    first = shrunk(letter, "MSG_SIZE_TOO_LARGE")
    assert first is not None
    assert (first.value, first.original_headers) == (None, [("ce_id", b"e1")])
    assert first.error.startswith("value is not JSON (value dropped: MSG_SIZE_TOO_LARGE")
    assert (first.source_topic, first.source_partition, first.source_offset) == ("t", 1, 7)
    second = shrunk(first, "MSG_SIZE_TOO_LARGE")
    assert second is not None
    assert second.original_headers == []
    assert "headers dropped" in second.error
    assert shrunk(second, "MSG_SIZE_TOO_LARGE") is None
