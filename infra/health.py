"""Health, readiness with stall detection, and Prometheus metrics for the worker services.

The relay and the indexer have no web framework; this is a deliberately tiny asyncio HTTP
server on their metrics port answering three GETs:

- `/healthz`: 200 while the process runs (liveness).
- `/readyz`: 200 when the stage is making progress, 503 with the reason when a dependency
  is down or the stage is *stalled*: work is waiting and nothing moved for longer than the
  stall threshold. The silent stall is the failure operators miss most, so readiness tracks
  progress, not only sockets.
- `/metrics`: the Prometheus text format of the service's registry (default: the
  process-wide one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = structlog.get_logger(__name__)

MAX_REQUEST_LINE = 8192


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
        self._registry = registry  # the service's own (the relay's), else the default
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("health_server_started", port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            status, content_type, body = await self._route(request_line[:MAX_REQUEST_LINE])
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a client that hangs up or never speaks gets nothing
        finally:
            writer.close()

    async def _route(self, request_line: bytes) -> tuple[str, str, bytes]:
        parts = request_line.decode(errors="replace").split()
        path = parts[1].split("?")[0] if len(parts) >= 2 else ""
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            ready, detail = await self._readiness()
            body = orjson.dumps({"status": "ok" if ready else "unavailable", "detail": detail})
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "application/json", b'{"status":"not found"}'
