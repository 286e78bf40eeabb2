"""Commit → searchable from indexed documents' times: the arithmetic, without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from operator_tools.freshness import (
    Sample,
    parse_interval,
    percentile,
    sample_of,
    summarize,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("100ms", 0.1), ("2m", 120.0), ("500", 0.5), (None, 1.0), ("-1", None)],
)
def test_refresh_intervals_are_read_as_elasticsearch_writes_them(
    text: str | None, seconds: float | None
) -> None:
    assert parse_interval(text) == seconds


def test_each_sample_counts_its_indexing_delay_plus_the_refresh_interval() -> None:
    """Searchable at most one refresh after indexing: the bound is delay + interval."""
    samples = [Sample(NOW - timedelta(seconds=10), 0.2), Sample(NOW - timedelta(seconds=5), 0.4)]
    report = summarize(samples, now=NOW, window_s=60, bucket_s=15, refresh_interval_s=1.0)
    assert report.samples == 2
    assert report.p50_s == pytest.approx(1.2)
    assert report.p99_s == pytest.approx(1.4)


def test_samples_land_in_their_time_bucket_oldest_first_and_outsiders_are_dropped() -> None:
    samples = [
        Sample(NOW - timedelta(seconds=59), 1.0),  # first bucket
        Sample(NOW - timedelta(seconds=1), 3.0),  # last bucket
        Sample(NOW - timedelta(seconds=61), 100.0),  # before the window
        Sample(NOW + timedelta(seconds=1), 100.0),  # after now
    ]
    report = summarize(samples, now=NOW, window_s=60, bucket_s=15, refresh_interval_s=0.0)
    assert [b.count for b in report.buckets] == [1, 0, 0, 1]
    assert report.buckets[0].start == NOW - timedelta(seconds=60)
    assert report.buckets[0].p50_s == 1.0
    assert report.buckets[1].p50_s is None
    assert report.buckets[3].p99_s == 3.0
    assert report.p99_s == 3.0


def test_clock_skew_never_makes_a_negative_latency() -> None:
    report = summarize(
        [Sample(NOW - timedelta(seconds=1), -0.5)],
        now=NOW,
        window_s=60,
        bucket_s=15,
        refresh_interval_s=1.0,
    )
    assert report.p50_s == 1.0


def test_a_source_without_both_times_gives_no_sample() -> None:
    assert sample_of({"committed_at": "2026-01-01T00:00:00Z"}) is None
    assert sample_of({"indexed_at": "nonsense", "committed_at": "2026-01-01T00:00:00Z"}) is None
    sample = sample_of(
        {"committed_at": "2026-01-01T00:00:00Z", "indexed_at": "2026-01-01T00:00:00.250Z"}
    )
    assert sample is not None
    assert sample.seconds == pytest.approx(0.25)
