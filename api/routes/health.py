"""Liveness, readiness (MongoDB and the auth service answer) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import grpc
import pymongo
from fastapi import APIRouter, Request, Response
from grpc_health.v1 import health_pb2
from pymongo.errors import PyMongoError

from api.deps import AuthChannelDep, MongoClientDep
from api.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from api.problems import ProblemError, problem_response, problem_responses
from api.schemas import Readiness

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 1.0
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


@router.get("/healthz", response_model=Readiness, responses=problem_responses())
async def healthz() -> Readiness:
    """200 while the process runs."""
    return Readiness(status="ok", checks={})


async def _mongo_ok(client: pymongo.AsyncMongoClient[dict[str, object]]) -> str:
    try:
        with pymongo.timeout(CHECK_TIMEOUT_S):
            await client.admin.command("ping")
    except PyMongoError as e:
        return f"down: {type(e).__name__}"
    return "ok"


async def _auth_ok(channel: grpc.aio.Channel) -> str:
    # The generated health stub is untyped; a raw unary call keeps mypy strict.
    check = channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S)
    except grpc.aio.AioRpcError as e:
        return f"down: {e.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return "down: not serving"
    return "ok"


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(
    request: Request, mongo: MongoClientDep, auth_channel: AuthChannelDep
) -> Readiness | Response:
    """200 when MongoDB and the auth service answer; otherwise 503 naming what is down."""
    mongo_status, auth_status = await asyncio.gather(_mongo_ok(mongo), _auth_ok(auth_channel))
    checks = {"mongodb": mongo_status, "auth": auth_status}
    down = sorted(name for name, status in checks.items() if status != "ok")
    if down:
        problem = ProblemError(
            503,
            f"not ready: {', '.join(down)} unreachable",
            type_="not-ready",
            extra={"checks": checks},
        )
        return problem_response(request, problem)
    return Readiness(status="ok", checks=checks)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    api_metrics: ApiMetrics = request.app.state.metrics
    return Response(api_metrics.render(), media_type=CONTENT_TYPE_LATEST)
