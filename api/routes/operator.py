"""Admin-only HTTP twins of the operator commands (`/v1/ops/...`).

Thin: each endpoint calls the same use case as the `outbox` command, on the API's own
clients, and every state-changing call is logged with who made it (the use cases log
`actor=api:<username>`). Long jobs (a full replay, `reindex`) belong to the CLI, which
shows progress and can be interrupted; these endpoints run to completion within the
request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AdminDep, EsDep, MongoClientDep, SettingsDep
from api.problems import ProblemError
from infra.errors import PipelineError, RetriableError, ServerUnreachableError
from operator_tools import dlq_ops
from operator_tools.clients import OperatorClients
from operator_tools.reconcile import reconcile
from operator_tools.replay import ReplayFilter, ReplayRequestError, replay
from operator_tools.status import status

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/ops", tags=["operator"])


class ReplayRequest(BaseModel):
    """The body of `POST /v1/ops/replay`: the same filters as `outbox replay`."""

    collection: str | None = None
    ids: list[str] = Field(default_factory=list, max_length=10_000)
    since: datetime | None = None
    until: datetime | None = None
    all: bool = False
    dry_run: bool = False
    rate: float | None = Field(default=None, gt=0)


class ReconcileRequest(BaseModel):
    collection: str | None = None
    repair: bool = False
    wait_seconds: float = Field(default=10.0, ge=0, le=120)


class RedriveRequest(BaseModel):
    ids: list[str] = Field(default_factory=list, max_length=10_000)
    all: bool = False


def _operator_clients(settings: SettingsDep, mongo: MongoClientDep, es: EsDep) -> OperatorClients:
    return OperatorClients(settings=settings, mongo=mongo, es=es)


def _problem(e: Exception) -> ProblemError:
    if isinstance(e, ServerUnreachableError | RetriableError):
        return ProblemError(503, str(e), title="A dependency is unavailable")
    if isinstance(e, ValueError):
        return ProblemError(422, str(e))
    return ProblemError(500, str(e), title="The operation failed")


@router.get("/status")
async def get_status(
    principal: AdminDep, settings: SettingsDep, mongo: MongoClientDep, es: EsDep
) -> dict[str, Any]:
    """What `outbox status --json` prints (admin only)."""
    try:
        report = await status(_operator_clients(settings, mongo, es))
    except PipelineError as e:
        raise _problem(e) from e
    return report.as_dict()


@router.post("/replay")
async def post_replay(
    body: ReplayRequest,
    principal: AdminDep,
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Re-publish stored outbox records (admin only); see `outbox replay`."""
    selection = ReplayFilter(
        collection=body.collection,
        ids=tuple(body.ids),
        since=body.since,
        until=body.until,
        everything=body.all,
    )
    try:
        result = await replay(
            _operator_clients(settings, mongo, es),
            selection,
            dry_run=body.dry_run,
            rate=body.rate,
            actor=f"api:{principal.username}",
        )
    except (PipelineError, ReplayRequestError) as e:
        raise _problem(e) from e
    return result.as_dict()


@router.post("/reconcile")
async def post_reconcile(
    body: ReconcileRequest,
    principal: AdminDep,
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Compare MongoDB with Elasticsearch, optionally repair (admin only)."""
    try:
        report = await reconcile(
            _operator_clients(settings, mongo, es),
            collection=body.collection,
            repair=body.repair,
            verify_timeout_s=body.wait_seconds,
            actor=f"api:{principal.username}",
        )
    except PipelineError as e:
        raise _problem(e) from e
    return report.as_dict()


@router.get("/dlq")
async def get_dlq(
    principal: AdminDep, settings: SettingsDep, mongo: MongoClientDep, es: EsDep
) -> list[dict[str, Any]]:
    """Dead-lettered events with their error and redrive time (admin only)."""
    try:
        entries = await dlq_ops.list_entries(_operator_clients(settings, mongo, es))
    except PipelineError as e:
        raise _problem(e) from e
    return [e.as_dict() for e in entries]


@router.post("/dlq/redrive")
async def post_redrive(
    body: RedriveRequest,
    principal: AdminDep,
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Send dead-lettered events back into the pipeline (admin only)."""
    try:
        result = await dlq_ops.redrive(
            _operator_clients(settings, mongo, es),
            ids=body.ids,
            everything=body.all,
            actor=f"api:{principal.username}",
        )
    except (PipelineError, ValueError) as e:
        raise _problem(e) from e
    return result.as_dict()
