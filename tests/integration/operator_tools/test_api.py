"""The admin-only HTTP twins of the operator commands, and the jobs the long ones run as."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from api.main import serve
from infra.devstack import free_port
from tests.fixtures.api import ApiHandle, open_api
from tests.fixtures.auth import AuthHandle
from tests.fixtures.pipeline import Pipeline

pytestmark = pytest.mark.integration

JOB_DEADLINE_S = 60.0


async def _job_end(client: httpx.AsyncClient, location: str, headers: dict[str, str]) -> Any:
    """Poll a job's status URL until it is no longer running; its last view."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        r = await client.get(location, headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["state"] != "running":
            return job
        assert time.monotonic() < deadline, f"job still running: {job}"
        await asyncio.sleep(0.1)


async def _write_books(api: ApiHandle, n: int) -> None:
    writer = await api.writer_headers()
    for i in range(n):
        r = await api.client.put(
            f"/v1/collections/books/documents/b{i}", json={"title": f"t{i}"}, headers=writer
        )
        assert r.status_code == 201, r.text


async def test_operator_endpoints_need_the_admin_role_and_log_who_acted(
    pipeline: Pipeline,
) -> None:
    """Writers get 403, anonymous callers 401; an admin's replay runs as a job and is logged."""
    api = pipeline.api
    await pipeline.put("books", "b1", {"title": "t"})

    assert (await api.client.get("/v1/ops/status")).status_code == 401
    writer = await api.auth_headers("writer")
    assert (await api.client.get("/v1/ops/status", headers=writer)).status_code == 403
    r = await api.client.post("/v1/ops/replay", json={"all": True}, headers=writer)
    assert r.status_code == 403
    assert (await api.client.get("/v1/ops/jobs", headers=writer)).status_code == 403

    admin = await api.auth_headers("admin")
    r = await api.client.get("/v1/ops/status", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["relay"]["backlog"] == 1

    r = await api.client.post("/v1/ops/replay", json={}, headers=admin)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")

    with capture_logs() as logs:
        r = await api.client.post(
            "/v1/ops/replay", json={"collection": "books", "dry_run": True}, headers=admin
        )
        assert r.status_code == 202, r.text
        job = await _job_end(api.client, r.headers["location"], admin)
    assert job["state"] == "succeeded", job
    assert job["result"]["matched"] == 1
    assert job["actor"].startswith("api:u-admin-")
    started = [e for e in logs if e["event"] == "replay_started"]
    assert started
    assert started[0]["actor"].startswith("api:u-admin-")

    r = await api.client.get("/v1/ops/dlq", headers=admin)
    assert r.status_code == 200
    assert r.json() == []


async def test_a_replay_answers_202_at_once_and_its_status_url_shows_progress_then_the_result(
    api_client: ApiHandle,
) -> None:
    """The POST returns while the replay still runs (a rate of 4/s over 8 records); the
    `Location` URL shows it running, then succeeded with the replay's `--json` result."""
    await _write_books(api_client, 8)
    admin = await api_client.auth_headers("admin")
    r = await api_client.client.post(
        "/v1/ops/replay", json={"collection": "books", "rate": 4}, headers=admin
    )
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    accepted = r.json()
    assert location == f"/v1/ops/jobs/{accepted['id']}"
    assert accepted["state"] == "running"
    assert accepted["kind"] == "replay"
    assert accepted["params"]["collection"] == "books"

    job = await _job_end(api_client.client, location, admin)
    assert job["state"] == "succeeded", job
    assert job["result"]["matched"] == 8
    assert job["result"]["published"] == 8
    assert job["progress"]["done"] == 8
    assert job["progress"]["total"] == 8

    listed = (await api_client.client.get("/v1/ops/jobs", headers=admin)).json()
    assert [j["id"] for j in listed][:1] == [accepted["id"]]

    r = await api_client.client.get(f"/v1/ops/jobs/{'0' * 32}", headers=admin)
    assert r.status_code == 404
    r = await api_client.client.get("/v1/ops/jobs/not-an-id", headers=admin)
    assert r.status_code == 422


async def test_a_reconcile_and_a_redrive_run_as_jobs_too(api_client: ApiHandle) -> None:
    admin = await api_client.auth_headers("admin")
    r = await api_client.client.post(
        "/v1/ops/reconcile", json={"collection": "books"}, headers=admin
    )
    assert r.status_code == 202, r.text
    job = await _job_end(api_client.client, r.headers["location"], admin)
    assert job["state"] == "succeeded", job
    assert job["result"]["in_sync"] is True

    r = await api_client.client.post("/v1/ops/dlq/redrive", json={"all": True}, headers=admin)
    assert r.status_code == 202, r.text
    job = await _job_end(api_client.client, r.headers["location"], admin)
    assert job["state"] == "succeeded", job
    assert job["result"] == {"redriven": [], "skipped": {}, "not_found": []}

    r = await api_client.client.post("/v1/ops/dlq/redrive", json={"ids": []}, headers=admin)
    assert r.status_code == 422


async def test_a_job_goes_on_after_its_client_disconnected(auth_service: AuthHandle) -> None:
    """Real uvicorn: the client that started a slow replay closes its connection; the job
    still publishes every record, as another connection sees."""
    port = free_port()
    settings = auth_service.settings.model_copy(
        update={"api": auth_service.settings.api.model_copy(update={"port": port})}
    )
    server = asyncio.create_task(serve(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
            deadline = time.monotonic() + 30
            while True:
                assert not server.done(), "serve() exited"
                assert time.monotonic() < deadline, "the API never answered"
                try:
                    if (await probe.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        writer = {"Authorization": f"Bearer {await auth_service.token('writer')}"}
        admin = {"Authorization": f"Bearer {await auth_service.token('admin')}"}
        async with httpx.AsyncClient(base_url=url, timeout=5) as first:
            for i in range(6):
                r = await first.put(
                    f"/v1/collections/books/documents/b{i}", json={"n": i}, headers=writer
                )
                assert r.status_code == 201, r.text
            r = await first.post(
                "/v1/ops/replay", json={"collection": "books", "rate": 3}, headers=admin
            )
            assert r.status_code == 202, r.text
            location = r.headers["location"]
        # The first client and its connections are gone while the job runs (about 2 s).
        async with httpx.AsyncClient(base_url=url, timeout=5) as second:
            running = (await second.get(location, headers=admin)).json()
            assert running["state"] == "running", running
            job = await _job_end(second, location, admin)
        assert job["state"] == "succeeded", job
        assert job["result"]["published"] == 6
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def test_a_job_running_when_the_api_stops_is_recorded_interrupted_and_a_rerun_completes(
    auth_service: AuthHandle,
) -> None:
    """Stopping the API (its lifespan ends) interrupts a running replay and says so; the
    same replay run again on the next API completes (replay is idempotent)."""
    settings = auth_service.settings
    async with open_api(settings, auth_service) as api:
        await _write_books(api, 10)
        admin = await api.auth_headers("admin")
        r = await api.client.post(
            "/v1/ops/replay", json={"collection": "books", "rate": 2}, headers=admin
        )
        assert r.status_code == 202, r.text
        location = r.headers["location"]
    async with open_api(settings, auth_service) as api:
        r = await api.client.get(location, headers=admin)
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["state"] == "interrupted", job
        assert "re-running it is safe" in job["error"]
        r = await api.client.post("/v1/ops/replay", json={"collection": "books"}, headers=admin)
        assert r.status_code == 202, r.text
        again = await _job_end(api.client, r.headers["location"], admin)
    assert again["state"] == "succeeded", again
    assert again["result"]["published"] == 10


async def test_freshness_reports_commit_to_searchable_of_the_writes_just_indexed(
    pipeline: Pipeline,
) -> None:
    """Every document indexed in the window is a sample; the bound includes the refresh."""
    await pipeline.start_stages()
    for i in range(5):
        await pipeline.wait_searchable(await pipeline.write("books", f"f{i}", {"title": f"t{i}"}))
    admin = await pipeline.api.auth_headers("admin")
    r = await pipeline.api.client.get("/v1/ops/freshness?window_s=120", headers=admin)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["samples"] == 5
    assert report["refresh_interval_s"] == 1.0
    assert report["p50_s"] >= 1.0
    assert report["p99_s"] >= report["p50_s"]
    assert sum(b["count"] for b in report["buckets"]) == 5
    assert report["outbox_retention_s"] == 7 * 86400
    assert (await pipeline.api.client.get("/v1/ops/freshness")).status_code == 401
