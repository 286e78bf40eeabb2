"""Admin-only HTTP twins of the operator commands (`/v1/ops/...`).

Thin: each endpoint calls the same use case as the `outbox` command, on the API's own
clients, and every state-changing call is logged with who made it (the use cases log
`actor=api:<username>`). Long jobs (a full replay, `reindex`) belong to the CLI, which
shows progress and can be interrupted; these endpoints run to completion within the
request.

Bodies are read and validated only after the caller proved to be an admin (`AdminDep` is
solved first), so an anonymous client gets its 401 without the API parsing anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict

from api.deps import AdminDep, EsDep, MongoClientDep, SettingsDep
from api.problems import ProblemError, problem_responses
from api.request_body import JSON_MEDIA_TYPES, check_media_type, read_limited_body
from api.validation import MalformedJsonError
from infra.errors import PipelineError, RetriableError, ServerUnreachableError
from infra.naming import COLLECTION_RE, is_document_collection
from operator_tools import dlq_ops
from operator_tools.clients import OperatorClients
from operator_tools.reconcile import reconcile
from operator_tools.replay import ReplayFilter, ReplayRequestError, replay
from operator_tools.status import status

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/ops", tags=["operator"])


M = TypeVar("M", bound=BaseModel)


_NON_EMPTY_STRING: JsonDict = {"type": "string", "minLength": 1}


class ReplayRequest(BaseModel):
    """The body of `POST /v1/ops/replay`: the same filters as `outbox replay`.

    Something must be selected (a filter, or `all`), `ids` need a `collection`, and
    `since` must be before `until` (the one rule JSON Schema cannot state)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {
                            "required": ["collection"],
                            "properties": {"collection": _NON_EMPTY_STRING},
                        },
                        {"required": ["ids"], "properties": {"ids": {"minItems": 1}}},
                        {"required": ["since"], "properties": {"since": {"type": "string"}}},
                        {"required": ["until"], "properties": {"until": {"type": "string"}}},
                        {"required": ["all"], "properties": {"all": {"const": True}}},
                    ]
                },
                {
                    "anyOf": [
                        {"not": {"required": ["ids"]}},
                        {"properties": {"ids": {"maxItems": 0}}},
                        {
                            "required": ["collection"],
                            "properties": {"collection": _NON_EMPTY_STRING},
                        },
                    ]
                },
            ]
        },
    )

    collection: str | None = Field(default=None, max_length=64)
    ids: list[str] = Field(default_factory=list, max_length=10_000)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    all: bool = False
    dry_run: bool = False
    rate: float | None = Field(default=None, gt=0)


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    collection: str | None = Field(
        default=None,
        pattern=COLLECTION_RE.pattern,
        description="A document collection (not an internal one); all of them when absent.",
    )
    repair: bool = False
    wait_seconds: float = Field(default=10.0, ge=0, le=120)


class RedriveRequest(BaseModel):
    """Either `ids` (at least one) or `all: true`."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["ids"], "properties": {"ids": {"minItems": 1}}},
                {"required": ["all"], "properties": {"all": {"const": True}}},
            ]
        },
    )

    ids: list[str] = Field(default_factory=list, max_length=10_000)
    all: bool = False


def _admin_body(model: type[M]) -> Callable[..., Awaitable[M]]:
    """A dependency: the JSON body as `model`, read only after the admin check passed."""

    async def body(principal: AdminDep, request: Request, settings: SettingsDep) -> M:
        check_media_type(request, JSON_MEDIA_TYPES)
        raw = await read_limited_body(request, settings.api.max_body_bytes)
        try:
            # Strict, from the JSON text: `false` is no number and `0` no time.
            return model.model_validate_json(raw or b"null", strict=True)
        except ValidationError as e:
            if any(err["type"] == "json_invalid" for err in e.errors()):
                raise MalformedJsonError("request body is not valid JSON") from e
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
            ) from e

    return body


def _body_spec(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_OPS_PROBLEMS = problem_responses(401, 403, 503)
_OPS_BODY_PROBLEMS = problem_responses(400, 401, 403, 415, 422, 503)


def _operator_clients(settings: SettingsDep, mongo: MongoClientDep, es: EsDep) -> OperatorClients:
    return OperatorClients(settings=settings, mongo=mongo, es=es)


def _problem(e: Exception) -> ProblemError:
    if isinstance(e, ServerUnreachableError | RetriableError):
        return ProblemError(503, str(e), title="A dependency is unavailable")
    if isinstance(e, ValueError):
        return ProblemError(422, str(e))
    return ProblemError(500, str(e), title="The operation failed")


@router.get("/status", responses=_OPS_PROBLEMS)
async def get_status(
    principal: AdminDep, settings: SettingsDep, mongo: MongoClientDep, es: EsDep
) -> dict[str, Any]:
    """What `outbox status --json` prints (admin only)."""
    try:
        report = await status(_operator_clients(settings, mongo, es))
    except PipelineError as e:
        raise _problem(e) from e
    return report.as_dict()


@router.post("/replay", responses=_OPS_BODY_PROBLEMS, openapi_extra=_body_spec(ReplayRequest))
async def post_replay(
    principal: AdminDep,
    body: Annotated[ReplayRequest, Depends(_admin_body(ReplayRequest))],
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


@router.post("/reconcile", responses=_OPS_BODY_PROBLEMS, openapi_extra=_body_spec(ReconcileRequest))
async def post_reconcile(
    principal: AdminDep,
    body: Annotated[ReconcileRequest, Depends(_admin_body(ReconcileRequest))],
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Compare MongoDB with Elasticsearch, optionally repair (admin only)."""
    if body.collection is not None and not is_document_collection(body.collection, settings.mongo):
        raise ProblemError(
            422,
            f"{body.collection!r} is not a document collection (internal ones are reserved)",
            title="Invalid input",
        )
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


@router.get("/dlq", responses=_OPS_PROBLEMS)
async def get_dlq(
    principal: AdminDep, settings: SettingsDep, mongo: MongoClientDep, es: EsDep
) -> list[dict[str, Any]]:
    """Dead-lettered events with their error and redrive time (admin only)."""
    try:
        entries = await dlq_ops.list_entries(_operator_clients(settings, mongo, es))
    except PipelineError as e:
        raise _problem(e) from e
    return [e.as_dict() for e in entries]


@router.post("/dlq/redrive", responses=_OPS_BODY_PROBLEMS, openapi_extra=_body_spec(RedriveRequest))
async def post_redrive(
    principal: AdminDep,
    body: Annotated[RedriveRequest, Depends(_admin_body(RedriveRequest))],
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
