"""Health, readiness with stall detection, and Prometheus metrics for the worker services.

The relay, the indexer and the auth service have no web framework of their own; this is
aiohttp's server (already a dependency: the Elasticsearch client's transport) on their
metrics port, answering three GETs (and HEADs):

- `/healthz`: 200 while the process runs (liveness).
- `/readyz`: 200 when the stage is making progress, 503 with the reason when a dependency
  is down or the stage is *stalled*: work is waiting and nothing moved for longer than the
  stall threshold. The silent stall is the failure operators miss most, so readiness tracks
  progress, not only sockets.
- `/metrics`: the Prometheus text format of the service's registry (the default one
  unless the service passes its own).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

log = structlog.get_logger(__name__)

# On stop, requests in flight get this long; probes and scrapes take milliseconds.
SHUTDOWN_TIMEOUT_S = 2.0


@dataclass
class ProgressMonitor:
    """Knows whether a stage has work waiting and when it last moved."""

    stall_after_s: float
    last_progress: float = field(default_factory=time.monotonic)
    waiting: int = 0  # work known to be pending (backlog, consumer lag)
    problem: str | None = None  # a dependency error the stage reported

    def progressed(self) -> None:
        self.last_progress = time.monotonic()
        self.problem = None

    def set_waiting(self, count: int) -> None:
        if count == 0:  # idle is healthy: restart the clock so an idle stage never looks stalled
            self.last_progress = time.monotonic()
        self.waiting = count

    def report_problem(self, problem: str) -> None:
        self.problem = problem

    def readiness(self) -> tuple[bool, str]:
        if self.problem:
            return False, self.problem
        idle_for = time.monotonic() - self.last_progress
        if self.waiting > 0 and idle_for > self.stall_after_s:
            return False, f"stalled: {self.waiting} waiting, no progress for {idle_for:.0f}s"
        return True, "ok"


def service_registry() -> CollectorRegistry:
    """A metrics registry of one service's own, with the process, platform and GC metrics.

    Each service (api, auth, relay, indexer) builds one in `serve()` and passes it down, so
    tests can run several services in one process without their metrics colliding, and
    every `/metrics` still shows the process's memory and CPU.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


Readiness = Callable[[], Awaitable[tuple[bool, str]]]


class HealthServer:
    """`/healthz`, `/readyz`, `/metrics` on one port; runs inside the service's event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0)."""
        if self._runner is None or not self._runner.addresses:
            return self._port
        return int(self._runner.addresses[0][1])

    async def __aenter__(self) -> HealthServer:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        # No access log: probes every few seconds would drown the service's own lines.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("health_server_started", port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = await self._readiness()
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "detail": detail},
            status=200 if ready else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
