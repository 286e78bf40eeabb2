"""Run one long-lived service in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

from infra.logging import configure_logging
from infra.settings import Settings

Serve = Callable[[Settings], Awaitable[None]]


def run_service(name: str, serve: Serve, settings: Settings) -> None:
    """Configure logging, run `serve(settings)`, turn SIGTERM/SIGINT into a clean cancel."""
    configure_logging(settings.log, service=name)
    asyncio.run(_main(name, serve, settings))


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
