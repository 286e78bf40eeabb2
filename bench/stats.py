"""The bench's arithmetic, pure: rates over a window, ratio summaries, percentiles, schedules.

Kept apart from the run so it is tested without servers (tests/unit/bench).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A ratio whose repetitions differ by more than this (max / min) is not a measurement.
MAX_SPREAD = 1.5


@dataclass(frozen=True)
class Rate:
    """`count` items in `seconds` (the measured window)."""

    count: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def rate_after_first(total: int, seen_at_first: int, first: float, last: float) -> Rate:
    """Items from the first observation to the last: what arrived *after* the first look.

    Work that shows up in lumps (a Kafka transaction, a bulk commit) must not be credited
    with the lump that opened the window: the window starts when that lump was seen.
    """
    return Rate(max(total - seen_at_first, 0), max(last - first, 0.0))


def summary(samples: Sequence[float], digits: int = 3) -> dict[str, object]:
    """`{"median", "min", "max", "samples"}` of one ratio's repetitions."""
    if not samples:
        raise ValueError("a ratio needs at least one sample")
    return {
        "median": round(statistics.median(samples), digits),
        "min": round(min(samples), digits),
        "max": round(max(samples), digits),
        "samples": [round(s, digits) for s in samples],
    }


def spread(samples: Sequence[float]) -> float:
    """max / min of the samples (infinite when one is zero or less)."""
    low = min(samples)
    return float("inf") if low <= 0 else max(samples) / low


def too_spread(ratios: Mapping[str, Sequence[float]], limit: float = MAX_SPREAD) -> list[str]:
    """One message per ratio whose repetitions spread more than `limit` (max / min)."""
    return [
        f"{name}: spread {spread(samples):.2f} (max {max(samples):.3f} / min "
        f"{min(samples):.3f}) is above {limit}; the machine was too busy to measure it"
        for name, samples in sorted(ratios.items())
        if samples and spread(samples) > limit
    ]


def interleaved(repetitions: int, sides: Sequence[str] = ("pipeline", "baseline")) -> list[str]:
    """The order the sides run in: A B A B … (`repetitions` of each), so drift hits both."""
    if repetitions < 1:
        raise ValueError("at least one repetition")
    return [side for _ in range(repetitions) for side in sides]


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """count, p50, p95, p99 and max (inclusive method: p99 of 100 samples is a sample)."""
    if len(samples_ms) < 2:
        out = {"count": float(len(samples_ms))}
        if samples_ms:
            only = round(samples_ms[0], 1)
            out |= {"p50": only, "p95": only, "p99": only, "max": only}
        return out
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "count": float(len(samples_ms)),
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "max": round(max(samples_ms), 1),
    }


def backlog_for(rate_per_s: float, window_s: float, *, floor: int, ceiling: int) -> int:
    """How many items keep a stage running `rate_per_s` busy for `window_s`, bounded."""
    return max(floor, min(ceiling, int(rate_per_s * window_s)))
