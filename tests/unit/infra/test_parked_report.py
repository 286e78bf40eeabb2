"""The parked-collections report the indexer writes and `outbox status` reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.parked_report import ParkedEntry, ParkedReport, parked_topic
from infra.settings import KafkaSettings


def test_a_report_round_trips_through_kafka_bytes() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    report = ParkedReport(
        "indexer-a", at, (ParkedEntry("books-v1", "alias name is an index", at, 3),)
    )
    assert ParkedReport.from_kafka(report.kafka_value()) == report
    assert report.kafka_key() == b"indexer-a"
    assert parked_topic(KafkaSettings(namespace="ns")) == "ns.indexer.parked"


@pytest.mark.parametrize("value", [b"{", b"{}", b'{"instance": "a", "reported_at": 1}'])
def test_anything_else_is_refused_with_value_error(value: bytes) -> None:
    with pytest.raises(ValueError, match="parked-collections report"):
        ParkedReport.from_kafka(value)
