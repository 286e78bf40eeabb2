"""Search parameters → an Elasticsearch query, and hits → the public result: pure functions.

Fields in `filter` and `sort` name *document* fields, dotted for nested objects
(`author.name`); three meta names address the envelope instead: `_id`, `_version` and
(sort only) `_score`. How a field is queried depends on its mapping, which the caller
reads from the index and passes in (`document_fields`):

- `filter=field:value` is an exact match: a string field matches on its keyword
  sub-field, numbers and booleans must parse as such (else 400), a field the index has
  never seen matches nothing. Several filters must all match.
- `sort=field` ascending, `sort=-field` descending; full-text-only fields cannot be sorted
  on. Every sort ends with the document id, so `search_after` pages are stable.
- `q` is a `simple_query_string` over the document's text fields, with a bounded cost:
  only the AND, OR, NOT, phrase, precedence and escape operators and the prefix `*`
  (the flags say so, and `~` is taken out of the query text too, so fuzzy and slop stay
  off on a server that ignores the flags); a prefix needs `MIN_PREFIX_CHARS` characters
  before its `*` and only the first `MAX_PREFIX_TERMS` count; any other `*` is literal.
- Elasticsearch stops the search after the configured timeout and counts `total`
  exactly only up to the configured cap (`relation` "gte" past it).

The `next` token is URL-safe base64 of the last hit's sort values together with the sort
it belongs to; it is opaque to clients and rejected (400) when malformed or reused with
another sort.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from infra.index_layout import (
    DOCUMENT_FIELD,
    ID_FIELD,
    KEYWORD_SUBFIELD,
    LIVE_FILTER,
    VERSION_FIELD,
)

MAX_SIZE = 100
DEFAULT_SIZE = 10
MAX_QUERY_CHARS = 1000
MAX_FILTERS = 20
MAX_TOKEN_CHARS = 4096
SIMPLE_QUERY_FLAGS = "AND|OR|NOT|PHRASE|PRECEDENCE|WHITESPACE|ESCAPE|PREFIX"
MIN_PREFIX_CHARS = 3
MAX_PREFIX_TERMS = 3
DEFAULT_TIMEOUT_MS = 2000
DEFAULT_MAX_TOTAL = 10_000
_PREFIX_STAR_RE = re.compile(r"(?<!\\)\*")
_TILDE_RE = re.compile(r"(?<!\\)~")
_TERM_CHAR_RE = re.compile(r"[^\s*()+|\"~\\-]")

_FIELD_RE = re.compile(r"^[A-Za-z0-9_@-]+(\.[A-Za-z0-9_@-]+)*$")
_MAX_FIELD_CHARS = 256
_NUMERIC_TYPES = frozenset(
    {
        "long",
        "integer",
        "short",
        "byte",
        "double",
        "float",
        "half_float",
        "scaled_float",
        "unsigned_long",
    }
)
_KEYWORD_TYPES = frozenset({"keyword", "constant_keyword", "wildcard", "ip", "version"})
META_ID = "_id"
META_VERSION = "_version"
META_SCORE = "_score"


class SearchParamError(ValueError):
    """A search parameter that cannot be turned into a query (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """What the index mapping says about one document field."""

    type: str
    keyword_subfield: bool = False

    @property
    def is_text(self) -> bool:
        return self.type in {"text", "match_only_text"}


@dataclass(frozen=True, slots=True)
class SearchParams:
    """The query string of `GET /v1/collections/{c}/search`, unvalidated."""

    q: str | None = None
    filters: Sequence[str] = field(default_factory=tuple)
    sort: str | None = None
    size: int = DEFAULT_SIZE
    search_after: str | None = None
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_total: int = DEFAULT_MAX_TOTAL


def document_fields(mapping: Mapping[str, Any]) -> dict[str, FieldInfo]:
    """Dotted document field names → type, from one index's `mappings`."""
    document = mapping.get("properties", {}).get(DOCUMENT_FIELD, {})
    fields: dict[str, FieldInfo] = {}
    _collect(document.get("properties", {}), "", fields)
    return fields


def _collect(properties: Mapping[str, Any], prefix: str, into: dict[str, FieldInfo]) -> None:
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            into[path] = FieldInfo("object")
            _collect(spec["properties"], f"{path}.", into)
            continue
        subfields = spec.get("fields", {})
        keyword = subfields.get(KEYWORD_SUBFIELD, {}).get("type") == "keyword"
        into[path] = FieldInfo(str(spec.get("type", "object")), keyword_subfield=keyword)


def merge_fields(mappings: Sequence[Mapping[str, FieldInfo]]) -> dict[str, FieldInfo]:
    """Fields of several indices behind one alias (during a reindex): the first one wins."""
    merged: dict[str, FieldInfo] = {}
    for fields in mappings:
        for name, info in fields.items():
            merged.setdefault(name, info)
    return merged


def check_field(name: str) -> str:
    if len(name) > _MAX_FIELD_CHARS or not _FIELD_RE.fullmatch(name):
        raise SearchParamError(
            f"field {name[:80]!r} must be dot-separated names of letters, digits, _, @ or -"
        )
    return name


def parse_filter(raw: str) -> tuple[str, str]:
    """`field:value` → (field, value); the value is everything after the first colon."""
    name, sep, value = raw.partition(":")
    if not sep or not name:
        raise SearchParamError(f"filter {raw[:80]!r} must look like field:value")
    return check_field(name), value


def parse_sort(raw: str | None) -> tuple[str, bool] | None:
    """`field` / `-field` → (field, descending); None when not given."""
    if raw is None or raw == "":
        return None
    descending = raw.startswith("-")
    name = raw[1:] if descending or raw.startswith("+") else raw
    return check_field(name), descending


def _filter_clause(  # noqa: PLR0911 - one return per field kind reads best
    name: str, value: str, fields: Mapping[str, FieldInfo]
) -> dict[str, Any]:
    if name == META_ID:
        return {"term": {ID_FIELD: value}}
    if name == META_VERSION:
        return {"term": {VERSION_FIELD: _parse_int(name, value)}}
    path = f"{DOCUMENT_FIELD}.{name}"
    info = fields.get(name)
    if info is None:
        # Never indexed in this collection: nothing can match; the query still runs so
        # the answer is an empty page, not an error.
        return {"term": {path: value}}
    if info.type in {"object", "nested"}:
        raise SearchParamError(f"cannot filter on {name!r}: it is an object, name a field in it")
    if info.is_text:
        if info.keyword_subfield:
            return {"term": {f"{path}.{KEYWORD_SUBFIELD}": value}}
        return {"match_phrase": {path: value}}
    if info.type in _NUMERIC_TYPES:
        return {"term": {path: _parse_number(name, value)}}
    if info.type == "boolean":
        if value not in {"true", "false"}:
            raise SearchParamError(f"filter {name!r} is boolean: use true or false")
        return {"term": {path: value == "true"}}
    return {"term": {path: value}}


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SearchParamError(f"filter {name!r} needs an integer, not {value[:40]!r}") from None


def _parse_number(name: str, value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise SearchParamError(f"filter {name!r} needs a number, not {value[:40]!r}") from None
    if not math.isfinite(number):
        raise SearchParamError(f"filter {name!r} needs a finite number")
    return number


def _sort_clause(
    sort: tuple[str, bool] | None, fields: Mapping[str, FieldInfo], *, has_query: bool
) -> list[dict[str, Any]]:
    tiebreak = {ID_FIELD: {"order": "asc"}}
    if sort is None:
        return [{"_score": {"order": "desc"}}, tiebreak] if has_query else [tiebreak]
    name, descending = sort
    order = "desc" if descending else "asc"
    if name == META_SCORE:
        return [{"_score": {"order": order}}, tiebreak]
    if name == META_ID:
        return [{ID_FIELD: {"order": order}}]
    if name == META_VERSION:
        return [{VERSION_FIELD: {"order": order}}, tiebreak]
    path = f"{DOCUMENT_FIELD}.{name}"
    info = fields.get(name)
    if info is not None:
        if info.type in {"object", "nested"}:
            raise SearchParamError(f"cannot sort on {name!r}: it is an object")
        if info.is_text:
            if not info.keyword_subfield:
                raise SearchParamError(f"cannot sort on {name!r}: it is full text only")
            path = f"{path}.{KEYWORD_SUBFIELD}"
    # `unmapped_type`: a field this collection never had sorts as missing, not as a 400.
    spec = {"order": order, "missing": "_last", "unmapped_type": "keyword"}
    return [{path: spec}, tiebreak]


def limit_prefixes(q: str) -> str:
    """Escape (make literal) every prefix `*` after a term shorter than
    `MIN_PREFIX_CHARS`, and every one after the first `MAX_PREFIX_TERMS`: a prefix term
    expands to every indexed term it starts, which is the expensive part of a query.
    Fuzzy and slop (`~`) become plain separators."""
    out: list[str] = []
    kept = 0
    last = 0
    for match in _PREFIX_STAR_RE.finditer(q):
        start = match.start()
        term = 0
        while start - term > 0 and _TERM_CHAR_RE.fullmatch(q[start - term - 1]):
            term += 1
        out.append(q[last:start])
        if term >= MIN_PREFIX_CHARS and kept < MAX_PREFIX_TERMS:
            kept += 1
            out.append("*")
        else:
            out.append("\\*")
        last = match.end()
    out.append(q[last:])
    return _TILDE_RE.sub(" ", "".join(out))


def _text_query(q: str, fields: Mapping[str, FieldInfo]) -> dict[str, Any]:
    text_fields = sorted(f"{DOCUMENT_FIELD}.{n}" for n, info in fields.items() if info.is_text)
    return {
        "simple_query_string": {
            "query": limit_prefixes(q),
            "fields": text_fields or [f"{DOCUMENT_FIELD}.*"],
            "default_operator": "and",
            "lenient": True,
            "flags": SIMPLE_QUERY_FLAGS,
        }
    }


def build_search(params: SearchParams, fields: Mapping[str, FieldInfo]) -> dict[str, Any]:
    """Keyword arguments for `AsyncElasticsearch.search` (query, sort, size, search_after)."""
    if not 1 <= params.size <= MAX_SIZE:
        raise SearchParamError(f"size must be between 1 and {MAX_SIZE}, got {params.size}")
    if len(params.filters) > MAX_FILTERS:
        raise SearchParamError(f"at most {MAX_FILTERS} filters")
    q = (params.q or "").strip()
    if len(q) > MAX_QUERY_CHARS:
        raise SearchParamError(f"q is longer than {MAX_QUERY_CHARS} characters")
    sort = parse_sort(params.sort)
    filters: list[dict[str, Any]] = [LIVE_FILTER]
    for raw in params.filters:
        name, value = parse_filter(raw)
        filters.append(_filter_clause(name, value, fields))
    query: dict[str, Any] = {"bool": {"filter": filters}}
    if q:
        query["bool"]["must"] = [_text_query(q, fields)]
    body: dict[str, Any] = {
        "query": query,
        "sort": _sort_clause(sort, fields, has_query=bool(q)),
        "size": params.size,
        "track_total_hits": params.max_total,
        "timeout": f"{params.timeout_ms}ms",
        "source_includes": [VERSION_FIELD, DOCUMENT_FIELD],
    }
    if params.search_after:
        body["search_after"] = decode_token(params.search_after, sort_key(params.sort))
    return body


def sort_key(sort: str | None) -> str:
    """What a `next` token is tied to: the requested sort, normalised."""
    parsed = parse_sort(sort)
    if parsed is None:
        return ""
    name, descending = parsed
    return f"-{name}" if descending else name


def encode_token(sort: str | None, values: Sequence[Any]) -> str:
    raw = orjson.dumps({"s": sort_key(sort), "v": list(values)})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, key: str) -> list[Any]:
    """The sort values inside a `next` token; `SearchParamError` if it is not one of ours."""
    if len(token) > MAX_TOKEN_CHARS:
        raise SearchParamError("search_after token is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = orjson.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise SearchParamError("search_after is not a token from a previous `next`") from e
    if not isinstance(decoded, dict) or not isinstance(decoded.get("v"), list):
        raise SearchParamError("search_after is not a token from a previous `next`")
    values: list[Any] = decoded["v"]
    if decoded.get("s") != key:
        raise SearchParamError("search_after token belongs to a different sort")
    if not values or not all(v is None or isinstance(v, str | int | float) for v in values):
        raise SearchParamError("search_after token holds no usable sort values")
    return values


def public_hits(hits: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Elasticsearch hits → `{"id", "version", "score", "document"}`."""
    return [
        {
            "id": hit["_id"],
            "version": hit.get("_source", {}).get(VERSION_FIELD),
            "score": hit.get("_score"),
            "document": hit.get("_source", {}).get(DOCUMENT_FIELD),
        }
        for hit in hits
    ]


def next_token(hits: Sequence[Mapping[str, Any]], *, size: int, sort: str | None) -> str | None:
    """A token for the page after `hits`, or None when this page was the last."""
    if len(hits) < size or not hits:
        return None
    values = hits[-1].get("sort")
    if not values:
        return None
    return encode_token(sort, values)
