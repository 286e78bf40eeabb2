"""The OpenAPI document, made to say exactly what the server does.

FastAPI builds most of it from the routes; this adds what depends on settings or that
FastAPI cannot express: the `Problem` and JSON-document schemas the routes reference, the
collection-name pattern without the internal (reserved) names, and per-route security
(reads are public unless `OUTBOX_API_PUBLIC_READS=false`).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.deps import BEARER_SCHEME
from api.problems import Problem
from api.schemas import DOCUMENT_KEY_PATTERN, JSON_COMPONENTS
from infra.naming import COLLECTION_RE, reserved_collections
from infra.settings import Settings

# Operations anyone may call (their routes take no token, or ignore it).
PUBLIC_OPERATIONS = frozenset({("post", "/v1/auth/token"), ("get", "/healthz"), ("get", "/readyz")})
READ_OPERATIONS = frozenset(
    {
        ("get", "/v1/collections/{collection}/documents/{document_id}"),
        ("get", "/v1/collections/{collection}/search"),
    }
)


def collection_pattern(settings: Settings) -> str:
    """`COLLECTION_RE` minus the reserved names (a negative lookahead)."""
    reserved = "|".join(sorted(re.escape(name) for name in reserved_collections(settings.mongo)))
    return f"^(?!(?:{reserved})$){COLLECTION_RE.pattern.removeprefix('^')}"


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace `app.openapi` with one that completes FastAPI's document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _limit_key_length(node: object, max_chars: int) -> None:
    """Every document key's `propertyNames` gets the key length limit (a setting)."""
    if isinstance(node, dict):
        names = node.get("propertyNames")
        if isinstance(names, dict) and names.get("pattern") == DOCUMENT_KEY_PATTERN:
            names["maxLength"] = max_chars
        for value in node.values():
            _limit_key_length(value, max_chars)
    elif isinstance(node, list):
        for value in node:
            _limit_key_length(value, max_chars)


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema()
    schemas.update(JSON_COMPONENTS)
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from POST /v1/auth/token",
    }
    _limit_key_length(schema, settings.es.field_name_max_chars)
    pattern = collection_pattern(settings)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "collection":
                    parameter["schema"]["pattern"] = pattern
            if (method, path) in PUBLIC_OPERATIONS or (
                (method, path) in READ_OPERATIONS and settings.api.public_reads
            ):
                operation["security"] = []
            else:
                operation["security"] = [{BEARER_SCHEME: []}]
    return schema
