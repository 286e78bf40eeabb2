"""Response (and token request) models of the REST API; they also feed OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.validation import DOCUMENT_ID_RE, INT64_MAX, INT64_MIN
from infra.index_limits import BLANK_CHARACTERS


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
    token: str = Field(
        description="Consistency token (also `Outbox-Token`): search with `after=<token>` "
        "answers once this write is searchable. Opaque."
    )


class TokenRequest(BaseModel):
    """JSON login body (the OAuth2 password form is accepted too)."""

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


# --- Document bodies in OpenAPI ---------------------------------------------------------
# What `api.validation` accepts, as JSON Schema, so generated clients and schema-driven
# tests send what the server takes: keys not starting with `$` and without `.` or NUL,
# integers in MongoDB's signed 64 bits, any nesting (the depth limit is not expressible).
# The schemas reference each other through `components/schemas` (api/openapi.py adds them).
# A key is also not blank (what Elasticsearch refuses, infra/index_limits.py); its length
# limit is a setting, added as `maxLength` where the schema is built (api/openapi.py).
DOCUMENT_KEY_PATTERN = f"^(?!\\$)(?![{BLANK_CHARACTERS}]*$)[^.\\u0000]*$"
JSON_VALUE_REF = "#/components/schemas/JsonValue"
JSON_COMPONENTS: dict[str, Any] = {
    "JsonValue": {
        "description": "Any JSON value the document store accepts.",
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "string"},
            {"type": "array", "items": {"$ref": JSON_VALUE_REF}},
            {"$ref": "#/components/schemas/JsonObject"},
        ],
    },
    "JsonObject": {
        "type": "object",
        "propertyNames": {"pattern": DOCUMENT_KEY_PATTERN},
        "additionalProperties": {"$ref": JSON_VALUE_REF},
    },
}
DOCUMENT_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The document; `id` is optional (generated when absent).",
    "propertyNames": {"pattern": DOCUMENT_KEY_PATTERN},
    "properties": {"id": {"type": "string", "pattern": DOCUMENT_ID_RE.pattern}},
    "additionalProperties": {"$ref": JSON_VALUE_REF},
}
DOCUMENT_BODY_WITHOUT_ID_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The document (the id is the path's; a body `id` must equal it).",
    "propertyNames": {"pattern": DOCUMENT_KEY_PATTERN, "not": {"const": "id"}},
    "additionalProperties": {"$ref": JSON_VALUE_REF},
}
