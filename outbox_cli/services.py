"""Run one long-lived service in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

from infra.logging import configure_logging
from infra.settings import ConfigurationError, Settings

Serve = Callable[[Settings], Awaitable[None]]
EXIT_MISCONFIGURED = 2


def run_service(name: str, serve: Serve, settings: Settings) -> None:
    """Configure logging, run `serve(settings)`, turn SIGTERM/SIGINT into a clean cancel.

    A setting the service cannot run with (a weak token secret in prod, half a TLS pair)
    ends it with one log line naming the setting and exit code 2, not a traceback.
    """
    configure_logging(settings.log, service=name)
    try:
        asyncio.run(_main(name, serve, settings))
    except ConfigurationError as e:
        structlog.get_logger(name).error("service_misconfigured", error=str(e))
        raise SystemExit(EXIT_MISCONFIGURED) from None


async def _main(name: str, serve: Serve, settings: Settings) -> None:
    log = structlog.get_logger(name)
    task = asyncio.ensure_future(serve(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    log.info("service_starting", env=settings.env)
    try:
        await task
    except asyncio.CancelledError:
        log.info("service_stopped")
