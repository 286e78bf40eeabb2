"""`POST /v1/auth/token`: credentials (JSON or the OAuth2 password form) → bearer token;
`POST /v1/auth/logout`: revoke the caller's token.

Failed logins are limited twice: per username by the auth service (shared by every API
replica), and here per client address (`OUTBOX_API_LOGIN_FAILURES_PER_MINUTE`), checked
before the auth service is asked, so a flood from one address costs no hashing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from api.deps import (
    AuthClientDep,
    BearerTokenDep,
    ClientAddressDep,
    PrincipalDep,
    SettingsDep,
)
from api.problems import ProblemError, problem_responses, too_many_requests
from api.rate_limit import TokenBuckets
from api.request_body import read_limited_body
from api.schemas import TokenRequest, TokenResponse

router = APIRouter(prefix="/v1/auth", tags=["auth"])

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
_TOKEN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TokenRequest.model_json_schema()},
            FORM_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["password"]},
                        "username": {"type": "string", "minLength": 1, "maxLength": 200},
                        "password": {
                            "type": "string",
                            "format": "password",
                            "minLength": 1,
                            "maxLength": 1000,
                        },
                    },
                }
            },
        },
    }
}


def _credentials(raw: bytes, media_type: str) -> TokenRequest:
    fields: Any
    if media_type == FORM_MEDIA_TYPE:
        try:
            form = parse_qs(raw.decode(), strict_parsing=False, max_num_fields=10)
        except (UnicodeDecodeError, ValueError) as e:
            raise ProblemError(400, f"malformed form body: {e}") from e
        if form.get("grant_type", ["password"])[0] != "password":
            raise ProblemError(400, "grant_type must be 'password'", title="Unsupported grant type")
        fields = {k: v[0] for k, v in form.items()}
    elif media_type in {"application/json", ""}:
        try:
            fields = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ProblemError(
                400, f"request body is not valid JSON: {e}", title="Malformed JSON"
            ) from e
    else:
        raise ProblemError(415, f"use application/json or {FORM_MEDIA_TYPE}")
    if not isinstance(fields, dict):
        raise ProblemError(
            422, "expected an object with username and password", title="Invalid input"
        )
    try:
        return TokenRequest.model_validate(
            {"username": fields.get("username"), "password": fields.get("password")}
        )
    except ValidationError as e:
        where = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
        raise ProblemError(
            422, f"invalid or missing field(s): {where}", title="Invalid input"
        ) from e


@router.post(
    "/token",
    response_model=TokenResponse,
    responses=problem_responses(400, 401, 415, 422, 429, 503),
    openapi_extra=_TOKEN_BODY,
)
async def issue_token(
    request: Request,
    response: Response,
    settings: SettingsDep,
    auth: AuthClientDep,
    client: ClientAddressDep,
) -> TokenResponse:
    """Log in: `{"username","password"}` as JSON or an OAuth2 password form.

    429 with Retry-After after too many failed logins from this address or for this
    username."""
    failures: TokenBuckets = request.app.state.login_failures
    wait = failures.wait_s(client)
    if wait is not None:
        raise too_many_requests(
            "too many failed logins from this address; try again later",
            type_="login-throttled",
            wait_s=wait,
        )
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw = await read_limited_body(request, settings.api.max_body_bytes)
    credentials = _credentials(raw, media_type)
    try:
        issued = await auth.login(credentials.username, credentials.password)
    except ProblemError as e:
        if e.status == 401:
            failures.take(client)
        raise
    response.headers["Cache-Control"] = "no-store"
    return TokenResponse(
        access_token=issued.access_token,
        token_type=issued.token_type,
        expires_in=issued.expires_in,
    )


@router.post(
    "/logout",
    status_code=204,
    responses={204: {"description": "The token is revoked."}, **problem_responses(401, 503)},
)
async def logout(token: BearerTokenDep, principal: PrincipalDep, auth: AuthClientDep) -> Response:
    """Revoke the caller's bearer token until it would have expired anyway (401 if it is
    not valid, already revoked included)."""
    await auth.revoke(token)
    return Response(status_code=204)
