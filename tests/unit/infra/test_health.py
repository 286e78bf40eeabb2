"""Readiness turns red on a stall (work waiting, nothing moving), not only on a dead socket."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, Counter

from infra.health import HealthServer, ProgressMonitor


def test_an_idle_stage_is_ready() -> None:
    monitor = ProgressMonitor(stall_after_s=0.0)
    monitor.set_waiting(0)
    assert monitor.readiness() == (True, "ok")


def test_waiting_work_without_progress_is_a_stall() -> None:
    monitor = ProgressMonitor(stall_after_s=0.0)
    monitor.last_progress -= 1
    monitor.set_waiting(5)
    ready, detail = monitor.readiness()
    assert not ready
    assert "stalled" in detail
    monitor.progressed()
    monitor.stall_after_s = 60
    assert monitor.readiness()[0]


def test_a_reported_problem_is_not_ready_until_progress() -> None:
    monitor = ProgressMonitor(stall_after_s=60)
    monitor.report_problem("Elasticsearch unreachable")
    assert monitor.readiness() == (False, "Elasticsearch unreachable")
    monitor.progressed()
    assert monitor.readiness()[0]


async def test_the_server_answers_health_readiness_and_metrics() -> None:
    monitor = ProgressMonitor(stall_after_s=0.0)
    counter = Counter("outbox_test_health_things_total", "things, for this test")
    counter.inc(3)

    async def readiness() -> tuple[bool, str]:
        return monitor.readiness()

    async with (
        HealthServer("127.0.0.1", 0, readiness) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        monitor.last_progress -= 1
        monitor.set_waiting(1)
        red = await client.get("/readyz")
        assert red.status_code == 503
        assert "stalled" in red.json()["detail"]
        metrics = await client.get("/metrics")
        assert "outbox_test_health_things_total 3.0" in metrics.text
        assert (await client.get("/nope")).status_code == 404


async def test_metrics_speak_the_prometheus_format_and_probes_answer_head() -> None:
    async def readiness() -> tuple[bool, str]:
        return True, "ok"

    async with (
        HealthServer("127.0.0.1", 0, readiness) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST
        assert (await client.head("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json() == {"status": "ok", "detail": "ok"}


async def test_stopping_frees_the_port_and_a_taken_port_is_an_error() -> None:
    async def readiness() -> tuple[bool, str]:
        return True, "ok"

    async with HealthServer("127.0.0.1", 0, readiness) as server:
        port = server.port
        assert port != 0
        with pytest.raises(OSError, match="address already in use"):
            async with HealthServer("127.0.0.1", port, readiness):
                pass
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
