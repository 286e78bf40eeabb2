"""Admin-only HTTP twins of the operator commands (`/v1/ops/...`).

Thin: each endpoint calls the same use case as the `outbox` command, on the API's own
clients, and every state-changing call is logged with who made it (the use cases log
`actor=api:<username>`). What can run for minutes (replay, reconcile, DLQ redrive) runs as
a job (`operator_tools.jobs`): the POST validates its input, starts the job and answers
202 with `Location: /v1/ops/jobs/{id}`; no Kafka flush or verification poll happens on the
request path, and the job goes on when the client disconnects.

Bodies are read and validated only after the caller proved to be an admin (`AdminDep` is
solved first), so an anonymous client gets its 401 without the API parsing anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict

from api.auth_client import Principal
from api.deps import AdminDep, EsDep, MongoClientDep, SettingsDep
from api.problems import ProblemError, problem_responses
from api.request_body import JSON_MEDIA_TYPES, check_media_type, read_limited_body
from api.validation import MalformedJsonError
from infra.errors import PipelineError, RetriableError, ServerUnreachableError
from infra.naming import COLLECTION_RE, is_document_collection
from operator_tools import dlq_ops
from operator_tools.clients import OperatorClients
from operator_tools.freshness import DEFAULT_BUCKET_S, DEFAULT_WINDOW_S, freshness
from operator_tools.jobs import JOB_ID_PATTERN, JobKind, JobRunner, Work
from operator_tools.progress_display import Progress
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


class JobProgressPublic(BaseModel):
    phase: str | None = Field(description="What the job is doing (e.g. `replaying`).")
    total: int | None = Field(description="Units of work in this phase, when known.")
    done: int


class JobPublic(BaseModel):
    """An operator job. `state` is `running` until it ends as `succeeded` (see `result`),
    `failed` (see `error`) or `interrupted` (the API stopped while it ran; re-run it)."""

    id: str
    kind: Literal["replay", "reconcile", "dlq-redrive"]
    state: Literal["running", "succeeded", "failed", "interrupted"]
    actor: str
    params: dict[str, Any]
    created_at: str
    finished_at: str | None
    heartbeat_at: str | None
    progress: JobProgressPublic
    result: dict[str, Any] | None = Field(description="The command's `--json` output, when done.")
    error: str | None


_JOB_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "The job started; poll the URL in `Location` for its state and result.",
        "headers": {
            "Location": {
                "description": "The job's status URL, `/v1/ops/jobs/{id}`.",
                "schema": {"type": "string", "pattern": "^/v1/ops/jobs/[0-9a-f]{32}$"},
                "required": True,
            }
        },
    }
}


async def get_job_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.jobs
    return runner


JobRunnerDep = Annotated[JobRunner, Depends(get_job_runner)]


async def _start(
    runner: JobRunner,
    response: Response,
    kind: JobKind,
    work: Work,
    *,
    principal: Principal,
    params: BaseModel,
) -> dict[str, Any]:
    try:
        job = await runner.submit(
            kind, work, actor=f"api:{principal.username}", params=params.model_dump(mode="json")
        )
    except PipelineError as e:
        raise _problem(e) from e
    response.headers["Location"] = f"/v1/ops/jobs/{job.id}"
    return job.as_dict()


@router.post(
    "/replay",
    status_code=202,
    response_model=JobPublic,
    responses={**_JOB_ACCEPTED, **_OPS_BODY_PROBLEMS},
    openapi_extra=_body_spec(ReplayRequest),
)
async def post_replay(
    *,
    principal: AdminDep,
    body: Annotated[ReplayRequest, Depends(_admin_body(ReplayRequest))],
    response: Response,
    runner: JobRunnerDep,
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Start re-publishing stored outbox records (admin only; a job, see `outbox replay`)."""
    selection = ReplayFilter(
        collection=body.collection,
        ids=tuple(body.ids),
        since=body.since,
        until=body.until,
        everything=body.all,
    )
    try:
        selection.validate()
    except ReplayRequestError as e:
        raise _problem(e) from e
    clients = _operator_clients(settings, mongo, es)

    async def work(progress: Progress) -> dict[str, Any]:
        result = await replay(
            clients,
            selection,
            dry_run=body.dry_run,
            rate=body.rate,
            progress=progress,
            actor=f"api:{principal.username}",
        )
        return result.as_dict()

    return await _start(runner, response, JobKind.REPLAY, work, principal=principal, params=body)


@router.post(
    "/reconcile",
    status_code=202,
    response_model=JobPublic,
    responses={**_JOB_ACCEPTED, **_OPS_BODY_PROBLEMS},
    openapi_extra=_body_spec(ReconcileRequest),
)
async def post_reconcile(
    *,
    principal: AdminDep,
    body: Annotated[ReconcileRequest, Depends(_admin_body(ReconcileRequest))],
    response: Response,
    runner: JobRunnerDep,
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Start comparing MongoDB with Elasticsearch, optionally repairing (admin only; a job)."""
    if body.collection is not None and not is_document_collection(body.collection, settings.mongo):
        raise ProblemError(
            422,
            f"{body.collection!r} is not a document collection (internal ones are reserved)",
            title="Invalid input",
        )
    clients = _operator_clients(settings, mongo, es)

    async def work(progress: Progress) -> dict[str, Any]:
        report = await reconcile(
            clients,
            collection=body.collection,
            repair=body.repair,
            verify_timeout_s=body.wait_seconds,
            progress=progress,
            actor=f"api:{principal.username}",
        )
        return report.as_dict()

    return await _start(runner, response, JobKind.RECONCILE, work, principal=principal, params=body)


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


@router.post(
    "/dlq/redrive",
    status_code=202,
    response_model=JobPublic,
    responses={**_JOB_ACCEPTED, **_OPS_BODY_PROBLEMS},
    openapi_extra=_body_spec(RedriveRequest),
)
async def post_redrive(
    *,
    principal: AdminDep,
    body: Annotated[RedriveRequest, Depends(_admin_body(RedriveRequest))],
    response: Response,
    runner: JobRunnerDep,
    settings: SettingsDep,
    mongo: MongoClientDep,
    es: EsDep,
) -> dict[str, Any]:
    """Start sending dead-lettered events back into the pipeline (admin only; a job)."""
    if not body.ids and not body.all:
        raise ProblemError(422, "say which entries to re-drive: `ids` or `all: true`")
    clients = _operator_clients(settings, mongo, es)

    async def work(progress: Progress) -> dict[str, Any]:
        progress.start("redriving", None)
        result = await dlq_ops.redrive(
            clients, ids=body.ids, everything=body.all, actor=f"api:{principal.username}"
        )
        progress.advance(len(result.redriven))
        return result.as_dict()

    return await _start(runner, response, JobKind.REDRIVE, work, principal=principal, params=body)


@router.get("/jobs", response_model=list[JobPublic], responses=_OPS_PROBLEMS)
async def list_jobs(principal: AdminDep, runner: JobRunnerDep) -> list[dict[str, Any]]:
    """The 50 most recent operator jobs, newest first (admin only)."""
    try:
        jobs = await runner.recent(50)
    except PipelineError as e:
        raise _problem(e) from e
    return [job.as_dict() for job in jobs]


@router.get(
    "/jobs/{job_id}", response_model=JobPublic, responses=problem_responses(401, 403, 404, 422, 503)
)
async def get_job(
    principal: AdminDep,
    runner: JobRunnerDep,
    job_id: Annotated[
        str, PathParam(pattern=JOB_ID_PATTERN, description="The id from `Location`.")
    ],
) -> dict[str, Any]:
    """An operator job's state, progress and, once it ended, its result or error."""
    try:
        job = await runner.get(job_id)
    except PipelineError as e:
        raise _problem(e) from e
    if job is None:
        raise ProblemError(404, f"no job {job_id} (jobs are kept for 7 days)", title="Not found")
    return job.as_dict()


@router.get("/freshness", responses=problem_responses(401, 403, 422, 503))
async def get_freshness(
    principal: AdminDep,
    settings: SettingsDep,
    es: EsDep,
    window_s: Annotated[
        int, Query(ge=15, le=3600, description="How far back to look, in seconds.")
    ] = DEFAULT_WINDOW_S,
    bucket_s: Annotated[
        int, Query(ge=5, le=600, description="Width of each plotted bucket, in seconds.")
    ] = DEFAULT_BUCKET_S,
) -> dict[str, Any]:
    """Commit → searchable p50/p99 (an upper bound: indexed - committed + the refresh
    interval) of the documents indexed in the window, overall and per bucket, and the
    outbox retention (admin only; the status page plots it)."""
    try:
        report = await freshness(es, settings.es, window_s=window_s, bucket_s=bucket_s)
    except PipelineError as e:
        raise _problem(e) from e
    return {**report.as_dict(), "outbox_retention_s": settings.mongo.outbox_ttl_days * 86400}
