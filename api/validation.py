"""Input rules for the REST API, as pure functions: names, ids, JSON bodies, merge patch.

Everything here is free of I/O so it can be tested in milliseconds. The HTTP layer maps
`InvalidInputError` (422), `MalformedJsonError` (400) and `BodyTooLargeError` (413) to problems.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from infra.index_limits import IndexLimitError, IndexLimits, check_document_limits, is_blank
from infra.naming import COLLECTION_RE

DOCUMENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")
# BSON stores integers as signed 64 bits; a larger JSON integer cannot be stored faithfully.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MERGE_PATCH_MEDIA_TYPE = "application/merge-patch+json"


class InputError(ValueError):
    """A request the API refuses before touching any server."""


class InvalidInputError(InputError):
    """Well-formed but not acceptable (HTTP 422)."""


class MalformedJsonError(InputError):
    """Not JSON at all (HTTP 400)."""


class BodyTooLargeError(InputError):
    """Over the configured byte limit (HTTP 413)."""


def check_collection_name(name: str, *, reserved: frozenset[str] = frozenset()) -> str:
    """Return `name` if it is a usable collection name; `reserved` are internal collections."""
    if not COLLECTION_RE.fullmatch(name):
        raise InvalidInputError(
            f"collection name {name!r} must match {COLLECTION_RE.pattern} "
            "(lowercase letter first, then up to 63 of a-z 0-9 _ -)"
        )
    if name in reserved:
        raise InvalidInputError(f"collection name {name!r} is reserved for internal use")
    return name


def check_document_id(document_id: object) -> str:
    """Return the id if it is a string of the allowed shape."""
    if not isinstance(document_id, str) or not DOCUMENT_ID_RE.fullmatch(document_id):
        raise InvalidInputError(
            f"document id must be a string matching {DOCUMENT_ID_RE.pattern}, "
            f"got {_short(document_id)}"
        )
    return document_id


def check_body_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise BodyTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")


def parse_json_object(
    raw: bytes, *, max_depth: int, max_key_chars: int | None = None
) -> dict[str, Any]:
    """Decode a request body that must be a JSON object, then check it (`check_document`)."""
    if not raw.strip():
        raise MalformedJsonError("request body is empty; expected a JSON object")
    check_integer_literals(raw)  # before parsing: orjson makes them floats or refuses them
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MalformedJsonError(f"request body is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidInputError(f"request body must be a JSON object, got {_json_kind(value)}")
    check_document(value, max_depth=max_depth, max_key_chars=max_key_chars)
    return value


# A JSON string (skipped whole), or an integer literal of 19+ digits outside one.
_STRING_OR_LONG_INTEGER = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![\d.eE+-])-?\d{19,}(?![.eE\d])')


def check_integer_literals(raw: bytes) -> None:
    """Refuse integer literals outside BSON's signed 64 bits.

    orjson turns integers beyond 64 bits into floats, so after parsing they look like
    numbers that fit; only the text shows what the client wrote. Cheap unless the body
    has a run of 19 digits somewhere.
    """
    if _LONG_DIGIT_RUN.search(raw) is None:
        return
    for match in _STRING_OR_LONG_INTEGER.finditer(raw):
        literal = match.group()
        if literal.startswith(b'"'):
            continue
        digits = literal.lstrip(b"-")
        if len(digits) > 20 or not INT64_MIN <= int(literal) <= INT64_MAX:
            raise InvalidInputError(f"integer {literal[:24].decode()}... does not fit in 64 bits")


_LONG_DIGIT_RUN = re.compile(rb"\d{19}")


def check_document(
    document: dict[str, Any], *, max_depth: int, max_key_chars: int | None = None
) -> None:
    """Refuse keys MongoDB treats specially, excessive nesting and integers BSON cannot hold.

    The top-level object is depth 1; each nested object or array adds one. With
    `max_key_chars`, also keys Elasticsearch cannot map: blank ones and longer ones (checked
    on the body itself, so a merge patch's bad key is refused before its `If-Match` is
    judged; the whole stored document is checked against the index limits later).
    """
    # An explicit stack: a hostile body must not be able to exhaust Python's recursion.
    stack: list[tuple[Any, int, str]] = [(document, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list) and depth > max_depth:
            raise InvalidInputError(f"nesting deeper than {max_depth} levels at {path or '/'}")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_key(key, path, max_key_chars)
                stack.append((item, depth + 1, f"{path}/{_escape_pointer(key)}"))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                stack.append((item, depth + 1, f"{path}/{index}"))
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not INT64_MIN <= value <= INT64_MAX
        ):
            raise InvalidInputError(f"integer at {path} does not fit in 64 bits")


def check_indexable(document: dict[str, Any], limits: IndexLimits) -> None:
    """Refuse a document Elasticsearch could not index (fields, depth, nested objects, field
    names; `infra.index_limits`), with a message naming the limit."""
    try:
        check_document_limits(document, limits)
    except IndexLimitError as e:
        raise InvalidInputError(str(e)) from e


def _check_key(key: str, path: str, max_chars: int | None) -> None:
    where = f"{path}/{_escape_pointer(key)}"
    if max_chars is not None:
        if is_blank(key):
            raise InvalidInputError(
                f"key at {_short(where)} is empty or only whitespace: Elasticsearch refuses "
                "such field names"
            )
        if len(key) > max_chars:
            raise InvalidInputError(
                f"key at {_short(where)} is {len(key)} characters long, over the limit of "
                f"{max_chars} (OUTBOX_ES_FIELD_NAME_MAX_CHARS)"
            )
    if key.startswith("$"):
        raise InvalidInputError(f"key at {_short(where)} starts with '$'")
    if "." in key:
        raise InvalidInputError(f"key at {_short(where)} contains '.'")
    if "\x00" in key:
        shown = _short(where.replace("\x00", "\\0"))
        raise InvalidInputError(f"key at {shown} contains NUL")


def split_body_id(
    body: dict[str, Any], *, path_id: str | None
) -> tuple[str | None, dict[str, Any]]:
    """Take the optional `id` out of a body; on PUT/PATCH it must equal the path id."""
    document = dict(body)
    if "id" not in document:
        return path_id, document
    body_id = check_document_id(document.pop("id"))
    if path_id is not None and body_id != path_id:
        raise InvalidInputError(f"body id {body_id!r} differs from the path id {path_id!r}")
    return body_id, document


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: the new value, inputs left unchanged."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def encoded_size(document: dict[str, Any]) -> int:
    """Bytes of the document as JSON: the unit of the body limit and of Kafka's message size."""
    return len(orjson.dumps(document))


def _escape_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"
