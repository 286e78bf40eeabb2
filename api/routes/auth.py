"""`POST /v1/auth/token`: credentials (JSON or the OAuth2 password form) → bearer token."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from api.deps import AuthClientDep, SettingsDep
from api.problems import ProblemError
from api.request_body import read_limited_body
from api.schemas import PROBLEM_RESPONSES, TokenRequest, TokenResponse

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
                        "username": {"type": "string"},
                        "password": {"type": "string", "format": "password"},
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
    "/token", response_model=TokenResponse, responses=PROBLEM_RESPONSES, openapi_extra=_TOKEN_BODY
)
async def issue_token(
    request: Request, response: Response, settings: SettingsDep, auth: AuthClientDep
) -> TokenResponse:
    """Log in: `{"username","password"}` as JSON or an OAuth2 password form."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw = await read_limited_body(request, settings.api.max_body_bytes)
    credentials = _credentials(raw, media_type)
    issued = await auth.login(credentials.username, credentials.password)
    response.headers["Cache-Control"] = "no-store"
    return TokenResponse(
        access_token=issued.access_token,
        token_type=issued.token_type,
        expires_in=issued.expires_in,
    )
