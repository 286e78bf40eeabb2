"""The app's HTTP edges that need no server: problem+json errors, trace headers, outage mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import structlog
from pydantic import SecretStr
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError
from structlog.testing import capture_logs

from api.main import create_app
from api.middleware import dependency_outage
from infra.errors import ServerUnreachableError
from infra.settings import ApiSettings, AuthSettings, ConfigurationError, Settings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app without its lifespan: only routes that touch no client are exercised."""
    app = create_app(Settings(env="test"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


async def test_an_unknown_route_is_a_problem_document(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 404
    assert body["instance"] == "/nope"
    assert {"type", "title", "detail"} <= body.keys()


async def test_a_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    r = await client.request("TRACE", "/healthz")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 405


async def test_healthz_answers_without_any_dependency(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200


async def test_the_callers_trace_is_continued_and_returned(client: httpx.AsyncClient) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        r = await client.get("/healthz", headers={"traceparent": TRACEPARENT})
    returned = r.headers["traceparent"]
    assert returned.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert returned != TRACEPARENT
    handled = [e for e in logs if e["event"] == "request_handled"]
    assert handled == [
        {
            "event": "request_handled",
            "log_level": "info",
            "method": "GET",
            "path": "/healthz",
            "status": 200,
            "duration_ms": handled[0]["duration_ms"],
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        }
    ]


async def test_a_bad_traceparent_starts_a_new_trace(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"traceparent": "00-zz-zz-01"})
    assert r.headers["traceparent"].startswith("00-")
    assert "zz" not in r.headers["traceparent"]


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert 'outbox_api_requests_total{method="GET",route="/healthz",status="200"}' in r.text


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x", None)


@pytest.mark.parametrize(
    "exc",
    [
        ServerUnreachableError("MongoDB at mongodb://u:secret@h:1 is unreachable"),
        ServerSelectionTimeoutError("no servers"),
        _rpc_error(grpc.StatusCode.UNAVAILABLE),
        _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_dependency_outages_are_recognised(exc: Exception) -> None:
    detail = dependency_outage(exc)
    assert detail is not None
    assert "secret" not in detail


@pytest.mark.parametrize(
    "exc",
    [ValueError("bug"), OperationFailure("bad", code=2), _rpc_error(grpc.StatusCode.INTERNAL)],
)
def test_other_errors_are_not_outages(exc: Exception) -> None:
    assert dependency_outage(exc) is None


async def test_the_openapi_document_builds(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/v1/collections/{collection}/documents/{document_id}" in paths
    assert "/v1/auth/token" in paths


@pytest.fixture
async def failing_client() -> AsyncIterator[httpx.AsyncClient]:
    """An app with two extra routes that fail the way a bug and an outage would."""
    app = create_app(Settings(env="test"))

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("a bug")

    @app.get("/mongo-down")
    async def mongo_down() -> None:
        raise ServerSelectionTimeoutError("no servers found")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


async def test_an_unexpected_error_is_a_logged_500_problem(
    failing_client: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        r = await failing_client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "a bug" not in r.text
    assert "traceparent" in r.headers
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["request_failed"]
    handled = [e for e in logs if e["event"] == "request_handled"]
    assert handled[0]["status"] == 500


async def test_a_dependency_outage_is_a_503_problem(failing_client: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        r = await failing_client.get("/mongo-down")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == "1"
    assert "request_failed" not in [e["event"] for e in logs]


def test_production_refuses_the_default_consistency_key() -> None:
    """Anyone could forge consistency tokens signed with the public dev key."""
    with pytest.raises(ConfigurationError, match="OUTBOX_API_CONSISTENCY_KEY"):
        create_app(
            Settings(env="prod", auth=AuthSettings(token_secret=SecretStr("s" * 40)))  # type: ignore[call-arg]
        )
    create_app(
        Settings(  # type: ignore[call-arg]
            env="prod",
            auth=AuthSettings(token_secret=SecretStr("s" * 40)),
            api=ApiSettings(consistency_key=SecretStr("k" * 32)),
        )
    )
