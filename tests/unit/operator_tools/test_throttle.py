"""The --rate limiter: a token bucket that averages out at the configured rate."""

from __future__ import annotations

import pytest

from operator_tools.throttle import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


async def test_rate_is_held_over_many_events() -> None:
    """1000 events at 100/s take about 10 s of (fake) time, not less."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        await limiter.acquire(limiter.batch_size(500))
    sent = 100 * limiter.batch_size(500)
    # The first burst is free; everything after it is paced.
    assert clock.now == pytest.approx((sent - limiter.burst) / 100)


async def test_no_rate_means_no_waiting() -> None:
    """Without --rate nothing sleeps and batches keep their preferred size."""
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock, sleep=clock.sleep)
    await limiter.acquire(10_000)
    assert clock.slept == 0
    assert limiter.batch_size(500) == 500


def test_small_rates_send_small_batches() -> None:
    """At 5 events/s a batch is at most 5 events, so progress stays smooth."""
    assert RateLimiter(5).batch_size(500) == 5
    assert RateLimiter(0.5).batch_size(500) == 1
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)
