"""The bench's arithmetic: ratio summaries, the spread check, percentiles, the schedule."""

from __future__ import annotations

import pytest

from bench.stats import (
    backlog_for,
    interleaved,
    percentiles,
    rate_after_first,
    spread,
    summary,
    too_spread,
)


def test_a_ratio_summary_keeps_every_sample_and_its_median_min_and_max() -> None:
    assert summary([0.9, 0.7, 0.8]) == {
        "median": 0.8,
        "min": 0.7,
        "max": 0.9,
        "samples": [0.9, 0.7, 0.8],
    }


def test_a_ratio_without_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        summary([])


def test_repetitions_spread_more_than_one_and_a_half_fail_the_run_by_name() -> None:
    failures = too_spread({"relay_ratio": [0.3, 0.5], "api_ratio": [0.7, 0.75, 0.8]})
    assert len(failures) == 1
    assert failures[0].startswith("relay_ratio: spread 1.67")


def test_a_spread_of_exactly_the_limit_passes_and_a_zero_sample_fails() -> None:
    assert too_spread({"indexer_ratio": [0.6, 0.9]}) == []
    assert spread([0.0, 0.5]) == float("inf")
    assert too_spread({"indexer_ratio": [0.0, 0.5]}) != []


def test_pipeline_and_baseline_alternate_so_drift_hits_both() -> None:
    assert interleaved(3) == ["pipeline", "baseline"] * 3
    assert interleaved(2, ("relay", "raw", "producer")) == ["relay", "raw", "producer"] * 2
    with pytest.raises(ValueError, match="at least one repetition"):
        interleaved(0)


def test_percentiles_interpolate_between_the_samples_and_round_to_a_tenth() -> None:
    cut = percentiles([float(i) for i in range(1, 101)])
    assert cut["count"] == 100
    assert (cut["p50"], cut["p95"], cut["p99"], cut["max"]) == (50.5, 95.0, 99.0, 100.0)


def test_percentiles_of_one_sample_are_that_sample_and_of_none_only_a_count() -> None:
    assert percentiles([42.0]) == {"count": 1.0, "p50": 42.0, "p95": 42.0, "p99": 42.0, "max": 42.0}
    assert percentiles([]) == {"count": 0.0}


def test_the_lump_that_opened_a_window_is_not_credited_to_it() -> None:
    rate = rate_after_first(10_000, 500, first=10.0, last=12.0)
    assert (rate.count, rate.seconds, rate.per_s) == (9500, 2.0, 4750.0)
    assert rate_after_first(500, 500, first=1.0, last=1.0).per_s == 0.0


def test_a_backlog_is_sized_to_the_window_within_its_bounds() -> None:
    assert backlog_for(20_000, 6.0, floor=20_000, ceiling=400_000) == 120_000
    assert backlog_for(10, 6.0, floor=500, ceiling=50_000) == 500
    assert backlog_for(1e6, 6.0, floor=500, ceiling=50_000) == 50_000
