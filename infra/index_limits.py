"""What one document may be so that Elasticsearch can index it: the limits, in one place.

Elasticsearch refuses a document that would push its index's mapping past
`index.mapping.total_fields.limit` (1000) or `index.mapping.depth.limit` (20), one with
more than `index.mapping.nested_objects.limit` (10000) nested objects, and field names
that are empty or blank. The embedded stand-in indexes all of those, so the project
checks them itself, with the same numbers: the API refuses such a write (422 naming the
limit), the indexer dead-letters such an event (written to Kafka by someone else), and
the indexer creates every index with these limits as its settings
(`IndexLimits.index_settings`), so the check and the index always agree. The numbers are
`OUTBOX_ES_*` settings whose defaults are Elasticsearch's.

What is counted, for one document under the mapping of `infra/index_layout.py`:

- **fields**: the envelope's 7 (`id`, `version`, `deleted`, `document`, `event_id`,
  `committed_at`, `indexed_at`), plus what the document maps: 1 per object, 1 per number
  or boolean, 2 per string (`text` and its `.keyword` sub-field), counted once per path
  (the elements of an array share their path; `null` maps nothing). Properties declared in
  a mapping override (`OUTBOX_ES_MAPPINGS`) count as declared (1 each plus each
  multi-field); with `"dynamic": false` or `"strict"` undeclared fields map nothing. The
  limit is per *index*, so fields that several documents add together can still pass it:
  Elasticsearch then refuses the later document and the indexer dead-letters it.
- **depth**: 1 for the `document` object, plus 1 per level of objects inside it (arrays
  do not count): a document may nest objects `depth - 1` levels, itself included.
- **nested objects**: objects at the paths the override maps as `"type": "nested"`.
- **field names**: a key must not be empty or blank (nor have an empty segment between
  dots, which Elasticsearch expands into objects) — blank as Elasticsearch judges it, by
  Java's `Character.isWhitespace` (`BLANK_CHARACTERS`) — and at most `field_name_chars`
  characters (256: our own limit, not Elasticsearch's; it keeps each mapping, which every
  node holds in its cluster state, reasonably small). Characters, not bytes, so the
  OpenAPI schema can state the limit exactly (`maxLength`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import ElasticSettings

# Elasticsearch's defaults, and the defaults of the OUTBOX_ES_* settings.
TOTAL_FIELDS_LIMIT = 1000  # index.mapping.total_fields.limit
DEPTH_LIMIT = 20  # index.mapping.depth.limit
NESTED_OBJECTS_LIMIT = 10_000  # index.mapping.nested_objects.limit
# Ours: Elasticsearch's index.mapping.field_name_length.limit is unbounded by default.
FIELD_NAME_MAX_CHARS = 256
# What Java's Character.isWhitespace calls whitespace (a field name of only these is
# "blank" to Elasticsearch), spelled out so the API's OpenAPI pattern says the same.
BLANK_CHARACTERS = (
    "\t\n\u000b\u000c\r\u001c\u001d\u001e\u001f \u1680\u2000-\u2006\u2008-\u200a"
    "\u2028\u2029\u205f\u3000"
)
_BLANK_RE = re.compile(f"[{BLANK_CHARACTERS}]*")


def is_blank(key: str) -> bool:
    """Empty, or only characters Elasticsearch treats as whitespace."""
    return _BLANK_RE.fullmatch(key) is not None


# Fields the envelope maps in every index (`infra.index_layout.index_mapping`).
ENVELOPE_FIELDS = 7


class IndexLimitError(ValueError):
    """A document Elasticsearch would refuse; the message names the limit."""


@dataclass(frozen=True, slots=True)
class IndexLimits:
    """The limits for one collection's index (see the module docstring)."""

    total_fields: int = TOTAL_FIELDS_LIMIT
    depth: int = DEPTH_LIMIT
    nested_objects: int = NESTED_OBJECTS_LIMIT
    field_name_chars: int = FIELD_NAME_MAX_CHARS
    # From the collection's mapping override: declared document paths → fields each maps,
    # whether undeclared fields are mapped, and which paths are `nested`.
    declared: Mapping[str, int] | None = None
    dynamic: bool = True
    nested_paths: frozenset[str] = frozenset()

    def index_settings(self) -> dict[str, int]:
        """The index settings that make Elasticsearch enforce exactly these limits."""
        return {
            "index.mapping.total_fields.limit": self.total_fields,
            "index.mapping.depth.limit": self.depth,
            "index.mapping.nested_objects.limit": self.nested_objects,
        }


def index_limits(es: ElasticSettings, collection: str) -> IndexLimits:
    """The configured limits, with what the collection's mapping override declares."""
    override = es.mappings.get(collection) or {}
    declared: dict[str, int] = {}
    nested: set[str] = set()
    properties = override.get("properties")
    if isinstance(properties, Mapping):
        _declared_fields(properties, "", declared, nested)
    dynamic = override.get("dynamic", True)
    return IndexLimits(
        total_fields=es.total_fields_limit,
        depth=es.depth_limit,
        nested_objects=es.nested_objects_limit,
        field_name_chars=es.field_name_max_chars,
        declared=declared,
        dynamic=dynamic is True or str(dynamic).lower() in ("true", "runtime"),
        nested_paths=frozenset(nested),
    )


def _declared_fields(
    properties: Mapping[str, Any], prefix: str, out: dict[str, int], nested: set[str]
) -> None:
    for name, spec in properties.items():
        if not isinstance(spec, Mapping):
            continue
        path = f"{prefix}{name}"
        subfields = spec.get("fields")
        out[path] = 1 + (len(subfields) if isinstance(subfields, Mapping) else 0)
        if spec.get("type") == "nested":
            nested.add(path)
        inner = spec.get("properties")
        if isinstance(inner, Mapping):
            _declared_fields(inner, f"{path}.", out, nested)


@dataclass(frozen=True, slots=True)
class DocumentShape:
    """What a document maps in Elasticsearch, counted as the limits count it."""

    fields: int  # envelope included
    depth: int  # the `document` object included
    nested_objects: int


def measure(document: Mapping[str, Any], limits: IndexLimits) -> DocumentShape:
    """Count what `document` maps (module docstring); raises `IndexLimitError` for a key
    Elasticsearch refuses."""
    paths: dict[str, int] = {}
    nested_objects = 0
    deepest = 1
    for path, value, depth in _walk(document, limits):
        deepest = max(deepest, depth)
        if isinstance(value, dict):
            fields = 1
            if path in limits.nested_paths:
                nested_objects += 1
        elif isinstance(value, str):
            fields = 2  # text and its .keyword
        elif value is None:
            continue  # null maps nothing
        else:
            fields = 1
        paths[path] = max(paths.get(path, 0), fields)
    declared = limits.declared or {}
    undeclared = sum(count for path, count in paths.items() if path not in declared)
    mapped = sum(declared.values()) + (undeclared if limits.dynamic else 0)
    # The `document` object is one level of Elasticsearch's depth.
    return DocumentShape(ENVELOPE_FIELDS + mapped, deepest + 1, nested_objects)


def check_document_limits(document: Mapping[str, Any], limits: IndexLimits) -> None:
    """Raise `IndexLimitError` if Elasticsearch would refuse `document` (module docstring)."""
    shape = measure(document, limits)
    if shape.fields > limits.total_fields:
        raise IndexLimitError(
            f"the document would map {shape.fields} Elasticsearch fields, over the limit of "
            f"{limits.total_fields} (index.mapping.total_fields.limit): {ENVELOPE_FIELDS} are "
            "the envelope's, each object and number maps one field, each string two"
        )
    if shape.depth > limits.depth:
        raise IndexLimitError(
            f"objects nest {shape.depth - 1} levels deep, over the mapping depth limit: "
            f"Elasticsearch allows {limits.depth} (index.mapping.depth.limit), one of them "
            "the `document` object"
        )
    if shape.nested_objects > limits.nested_objects:
        raise IndexLimitError(
            f"the document holds {shape.nested_objects} nested objects, over the limit of "
            f"{limits.nested_objects} (index.mapping.nested_objects.limit)"
        )


def _walk(document: Mapping[str, Any], limits: IndexLimits) -> Iterator[tuple[str, Any, int]]:
    """(dotted path, value, depth) of every object and value below `document`, checking
    each key on the way. An object's depth counts the objects around it (`document` is 1,
    arrays do not count); a value has the depth of the object that holds it.

    An explicit stack: a hostile document must not be able to exhaust Python's recursion.
    """
    stack: list[tuple[str, Any, int]] = [("", document, 0)]
    while stack:
        path, value, parent_depth = stack.pop()
        if isinstance(value, dict):
            depth = parent_depth + 1
            if path:
                yield path, value, depth
            for key, item in value.items():
                segments = _segments(str(key), path, limits)
                if len(segments) == 1:
                    stack.append((f"{path}.{key}" if path else key, item, depth))
                    continue
                # Elasticsearch expands a dotted key into objects, one per dot.
                for i in range(1, len(segments)):
                    yield _join(path, segments[:i]), {}, depth + i
                stack.append((_join(path, segments), item, depth + len(segments) - 1))
        elif isinstance(value, list):
            # The elements of an array share its path.
            stack.extend((path, item, parent_depth) for item in value)
        else:
            yield path, value, parent_depth


def _join(prefix: str, segments: list[str]) -> str:
    return ".".join([prefix, *segments]) if prefix else ".".join(segments)


def _segments(key: str, prefix: str, limits: IndexLimits) -> list[str]:
    if len(key) > limits.field_name_chars:
        where = _join(prefix, [key])[:80]
        raise IndexLimitError(
            f"key {where!r}... is {len(key)} characters long, over the limit of "
            f"{limits.field_name_chars} (OUTBOX_ES_FIELD_NAME_MAX_CHARS)"
        )
    segments = key.split(".") if "." in key else [key]
    if any(is_blank(s) for s in segments):
        where = _join(prefix, [key])[:80]
        raise IndexLimitError(
            f"key {where!r} is empty or only whitespace (or has an empty part between "
            "dots): Elasticsearch refuses such field names"
        )
    return segments
