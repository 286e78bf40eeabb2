"""Response (and token request) models of the REST API; they also feed OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DocumentPublic(BaseModel):
    """A live document as stored in MongoDB (the source of truth)."""

    id: str
    version: int = Field(ge=1)
    document: dict[str, Any]


class DocumentWritten(BaseModel):
    """The result of a create, replace or patch."""

    id: str
    version: int = Field(ge=1)
    event_id: str = Field(description="The outbox event id (CloudEvents `id`) of this write.")
    document: dict[str, Any]


class TokenRequest(BaseModel):
    """JSON login body (the OAuth2 password form is accepted too)."""

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 412, 413, 415, 422, 503)
}
