"""The admin-only HTTP twins of the operator commands."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.fixtures.pipeline import Pipeline


async def test_operator_endpoints_need_the_admin_role_and_log_who_acted(
    pipeline: Pipeline,
) -> None:
    """Writers get 403, anonymous callers 401; an admin's replay runs and is logged."""
    api = pipeline.api
    await pipeline.put("books", "b1", {"title": "t"})

    assert (await api.client.get("/v1/ops/status")).status_code == 401
    writer = await api.auth_headers("writer")
    assert (await api.client.get("/v1/ops/status", headers=writer)).status_code == 403
    r = await api.client.post("/v1/ops/replay", json={"all": True}, headers=writer)
    assert r.status_code == 403

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
    assert r.status_code == 200, r.text
    assert r.json()["matched"] == 1
    started = [e for e in logs if e["event"] == "replay_started"]
    assert started
    assert started[0]["actor"].startswith("api:u-admin-")

    r = await api.client.get("/v1/ops/dlq", headers=admin)
    assert r.status_code == 200
    assert r.json() == []
