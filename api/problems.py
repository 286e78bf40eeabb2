"""RFC 9457 problem details for every error the API returns, and the handlers that make them."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.document_store import IdempotencyKeyReusedError, OutcomeUnknownError
from api.rate_limit import retry_after
from api.validation import BodyTooLargeError, InputError, MalformedJsonError
from api.write_rules import (
    DocumentExistsError,
    DocumentNotFoundError,
    PreconditionFailedError,
    WriteRejectedError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://outbox-pipeline.dev/problems/"

PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"
# Every route can answer these whatever it does: a body over the limit is refused before
# routing (api/body_limit.py).
ALWAYS = (413,)

log = structlog.get_logger(__name__)


class Problem(BaseModel):
    """RFC 9457 problem details; some problems add members (`errors`, `checks`, `event_id`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str


# What each status means on this API, for OpenAPI (the detail says the specifics).
_MEANING = {
    400: "Malformed request: bad JSON, a bad search parameter or token.",
    401: "A bearer token is required, or the one given is invalid, expired or revoked.",
    403: "The token's role or collection scope does not allow this.",
    404: "No such document (or no such route).",
    409: "Conflict with the current state (the document exists; an Idempotency-Key reused).",
    412: "If-Match does not match the document's current version.",
    413: "The request body is larger than the limit.",
    415: "Unsupported Content-Type.",
    422: "Well-formed but invalid input (names, ids, keys, nesting, integers, filters).",
    429: "Too many requests (or failed logins) from this client: see Retry-After.",
    503: "A dependency is unavailable, the write's outcome is unknown, or the write is not "
    "searchable yet: see the problem type.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the problems a route can answer (plus `ALWAYS`).

    Every route uses this, so each documents exactly its statuses, all as
    `application/problem+json` with the one `Problem` schema.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *ALWAYS}):
        response: dict[str, Any] = {
            "description": _MEANING.get(status, _phrase(status)),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
        }
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[status] = response
    return responses


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _phrase(status)
        self.type = type_ or _slug(self.title)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})


def too_many_requests(detail: str, *, type_: str, wait_s: float) -> ProblemError:
    """A 429 whose `Retry-After` is the bucket's wait, in whole seconds (at least 1)."""
    return ProblemError(429, detail, type_=type_, headers={"Retry-After": retry_after(wait_s)})


def service_unavailable(detail: str) -> ProblemError:
    return ProblemError(503, detail, type_="dependency-unavailable", headers={"Retry-After": "1"})


def problem_response(request: Request, problem: ProblemError) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extra,
    }
    return JSONResponse(
        jsonable_encoder(body),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def problem_for_domain_error(  # noqa: PLR0911 - one return per error class reads best
    e: InputError | WriteRejectedError,
) -> ProblemError:
    """Map the pure modules' errors to HTTP."""
    if isinstance(e, BodyTooLargeError):
        return ProblemError(413, str(e))
    if isinstance(e, MalformedJsonError):
        return ProblemError(400, str(e), title="Malformed JSON")
    if isinstance(e, InputError):
        return ProblemError(422, str(e), title="Invalid input")
    if isinstance(e, DocumentNotFoundError):
        return ProblemError(404, str(e), title="Document not found")
    if isinstance(e, DocumentExistsError):
        return ProblemError(409, str(e), title="Document already exists")
    if isinstance(e, PreconditionFailedError):
        return ProblemError(412, str(e))
    if isinstance(e, IdempotencyKeyReusedError):
        # 409, a conflict with state the request cannot show (the first use of the key).
        return ProblemError(409, str(e), type_="idempotency-key-reused")
    return ProblemError(409, str(e), title="Write rejected")


def install_problem_handlers(app: FastAPI) -> None:
    """Answer HTTP errors, validation errors and domain errors with problem+json.

    Unexpected exceptions and dependency outages are handled by `RequestMiddleware`
    (a handler for `Exception` here would run in Starlette's outermost middleware,
    which re-raises after answering).
    """

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(request, exc)

    async def on_domain(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InputError | WriteRejectedError)
        return problem_response(request, problem_for_domain_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        problem = ProblemError(
            exc.status_code,
            str(exc.detail) if exc.detail else _phrase(exc.status_code),
            headers=exc.headers,
        )
        if exc.status_code == 404 and exc.detail == "Not Found":
            problem.detail = f"no route for {request.method} {request.url.path}"
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only;
            # each method here is a route of its own.
            allowed = _allowed_methods(request)
            problem.headers["Allow"] = ", ".join(allowed)
            problem.detail = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
        return problem_response(request, problem)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        problem = ProblemError(
            422, f"{where}: {first['msg']}", title="Invalid input", extra={"errors": errors}
        )
        return problem_response(request, problem)

    async def on_outcome_unknown(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OutcomeUnknownError)
        # No Retry-After: retrying a POST without an Idempotency-Key may write twice.
        problem = ProblemError(
            503,
            f"the write's outcome is unknown: it may or may not have been stored. Read the "
            f"document (or search the outbox for event {exc.event_id}) before writing again; "
            "a POST repeated with the same Idempotency-Key is safe",
            title="Write outcome unknown",
            type_="outcome-unknown",
            extra={"event_id": exc.event_id},
        )
        return problem_response(request, problem)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(OutcomeUnknownError, on_outcome_unknown)
    app.add_exception_handler(InputError, on_domain)
    app.add_exception_handler(WriteRejectedError, on_domain)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(title: str) -> str:
    return "-".join(title.lower().replace("'", "").split())
