"""A token bucket for `--rate N` (events per second)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Lets `rate` events per second through on average, bursts up to `burst`.

    `rate=None` means unlimited. Clock and sleep are injectable for tests.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else (rate or 1.0))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def batch_size(self, preferred: int) -> int:
        """How many events to hand over at once without overshooting the rate much."""
        if self.rate is None:
            return preferred
        return max(1, min(preferred, int(self.burst)))

    def delay_for(self, n: int) -> float:
        """Seconds to wait before `n` events may go; takes the tokens (may go negative)."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, n: int = 1) -> None:
        """Wait until `n` events may go."""
        delay = self.delay_for(n)
        if delay > 0:
            await self._sleep(delay)
