"""A small process supervisor: start services in order, restart the ones that crash, stop all.

Each service is a child process (`python -m outbox_cli <name>`). Children run in their own
session so a terminal's Ctrl-C reaches only the supervisor, which then stops them in
reverse order; on Linux each child also gets SIGTERM if the supervisor itself dies, so
even a kill -9 of `outbox dev` leaves no orphans.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from infra.process import die_with_parent

log = structlog.get_logger(__name__)

ReadyCheck = Callable[[], Awaitable[bool]]

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 30.0  # a service that ran this long gets its backoff reset
STOP_TIMEOUT_S = 10.0


@dataclass
class ServiceSpec:
    """How to run one service and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: ReadyCheck | None = None
    ready_timeout_s: float = 30.0


@dataclass
class _Running:
    spec: ServiceSpec
    process: asyncio.subprocess.Process
    started_at: float
    restarts: int = 0
    backoff_s: float = INITIAL_BACKOFF_S
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class ServiceStartError(RuntimeError):
    """A service exited or did not become ready while the stack was starting."""


class Supervisor:
    """Starts services in order, restarts crashed ones with backoff, stops them in reverse."""

    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}
        self._stopping = False

    @property
    def pids(self) -> dict[str, int]:
        return {name: r.process.pid for name, r in self._running.items()}

    def restarts(self, name: str) -> int:
        return self._running[name].restarts

    async def start(self, specs: list[ServiceSpec]) -> None:
        """Start each service and wait until it is ready before the next one."""
        for spec in specs:
            process = await self._spawn(spec)
            running = _Running(spec=spec, process=process, started_at=time.monotonic())
            self._running[spec.name] = running
            await self._wait_ready(running)
            running.watcher = asyncio.create_task(self._watch(running), name=f"watch-{spec.name}")
            log.info("service_started", service=spec.name, pid=process.pid)

    async def _spawn(self, spec: ServiceSpec) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *spec.argv,
            env=spec.env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    async def _wait_ready(self, running: _Running) -> None:
        spec = running.spec
        if spec.ready is None:
            return
        deadline = time.monotonic() + spec.ready_timeout_s
        while time.monotonic() < deadline:
            if running.process.returncode is not None:
                raise ServiceStartError(
                    f"{spec.name} exited with code {running.process.returncode} while starting"
                )
            if await spec.ready():
                return
            await asyncio.sleep(0.1)
        raise ServiceStartError(f"{spec.name} was not ready within {spec.ready_timeout_s:.0f}s")

    async def _watch(self, running: _Running) -> None:
        """Wait for the child to exit; restart it with exponential backoff unless stopping."""
        while True:
            code = await running.process.wait()
            if self._stopping:
                return
            uptime = time.monotonic() - running.started_at
            if uptime >= STABLE_AFTER_S:
                running.backoff_s = INITIAL_BACKOFF_S
            log.error(
                "service_crashed",
                service=running.spec.name,
                exit_code=code,
                uptime_s=round(uptime, 1),
                restart_in_s=running.backoff_s,
            )
            await asyncio.sleep(running.backoff_s)
            if self._stopping:
                return
            running.backoff_s = min(running.backoff_s * 2, MAX_BACKOFF_S)
            running.process = await self._spawn(running.spec)
            running.started_at = time.monotonic()
            running.restarts += 1
            log.warning(
                "service_restarted",
                service=running.spec.name,
                pid=running.process.pid,
                restarts=running.restarts,
            )

    async def stop(self) -> None:
        """SIGTERM every service in reverse start order; SIGKILL what lingers."""
        self._stopping = True
        for running in reversed(list(self._running.values())):
            if running.watcher is not None:
                running.watcher.cancel()
            await _terminate(running.spec.name, running.process)
        self._running.clear()


async def _terminate(name: str, process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("service_killed", service=name, reason="did not stop within timeout")
        process.kill()
        await process.wait()
    except ProcessLookupError:
        return
    log.info("service_stopped", service=name, exit_code=process.returncode)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The supervisor's environment plus the services' settings."""
    return {**os.environ, **extra}
