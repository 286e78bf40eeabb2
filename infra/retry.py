"""The one retry policy: exponential backoff with jitter, bounded, logged before each retry.

Business code does not retry; adapters wrap their retriable calls with `retrying()`.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from infra.errors import RetriableError

log = structlog.get_logger(__name__)


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, RetriableError)


def _log_before_sleep(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "retry_scheduled",
            operation=what,
            attempt=state.attempt_number,
            sleep_s=round(state.upcoming_sleep, 3),
            error=repr(exc),
        )

    return before_sleep


def retrying(
    what: str,
    *,
    attempts: int = 8,
    max_delay_s: float = 60.0,
    initial_s: float = 0.1,
    max_wait_s: float = 5.0,
    retry_on: Callable[[BaseException], bool] = _is_retriable,
) -> AsyncRetrying:
    """`async for attempt in retrying("es_bulk"): with attempt: ...`.

    Stops after `attempts` tries or `max_delay_s`, whichever comes first, and re-raises
    the last error. Pass `attempts=0` to retry until `max_delay_s` only.
    """
    stop: stop_base = stop_after_delay(max_delay_s)
    if attempts > 0:
        stop = stop | stop_after_attempt(attempts)
    return AsyncRetrying(
        stop=stop,
        wait=wait_random_exponential(multiplier=initial_s, max=max_wait_s),
        retry=retry_if_exception(retry_on),
        before_sleep=_log_before_sleep(what),
        reraise=True,
    )
