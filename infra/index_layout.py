"""The Elasticsearch side of the contract: index naming, mapping and `_source` layout.

The indexer writes this layout, search and the operator tools read it; this module is
its only definition.

The `_source` of every indexed document::

    {
      "id": "<document id>",            # keyword; search's tiebreaker sort
      "version": 7,                     # long; equals the external _version
      "deleted": false,                 # true for a tombstone
      "document": {...} | null,         # the document after the write; null in a tombstone
      "event_id": "<outbox event id>",  # keyword
      "committed_at": "<RFC 3339>",     # when the write committed (outbox record time)
      "indexed_at": "<RFC 3339>"        # when the indexer built this source
    }

A delete is a *tombstone* (`deleted: true`, `document: null`) at the delete's version,
never an Elasticsearch delete: the tombstone keeps the version, so a stale event can
never resurrect the document. Search filters tombstones out with `LIVE_FILTER`.

Naming: search and the indexer use the alias ``<prefix><collection>``; the concrete
index behind it is ``<alias>.v<N>`` (`index_name`). A collection name never contains a
`.`, so no collection's alias can ever be another collection's concrete index.
Deployments from before this scheme have ``<alias>-v<N>`` indices; `index_version`
still recognises them, and `outbox reindex` moves a collection to the new scheme.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from infra.envelope import EventType, OutboxRecord, format_time

ID_FIELD = "id"
VERSION_FIELD = "version"
DELETED_FIELD = "deleted"
DOCUMENT_FIELD = "document"

# Every search combines its query with this filter: tombstones never appear.
LIVE_FILTER: dict[str, Any] = {"term": {DELETED_FIELD: False}}

# Strings in documents: full text for `q`, plus a keyword sub-field for exact filters
# and sorting (Elasticsearch's own default, spelled out so overrides can rely on it).
KEYWORD_SUBFIELD = "keyword"
_DOCUMENT_STRINGS_TEMPLATE: dict[str, Any] = {
    "document_strings": {
        "path_match": f"{DOCUMENT_FIELD}.*",
        "match_mapping_type": "string",
        "mapping": {
            "type": "text",
            "fields": {KEYWORD_SUBFIELD: {"type": "keyword", "ignore_above": 256}},
        },
    }
}
EVENT_ID_FIELD = "event_id"
COMMITTED_AT_FIELD = "committed_at"
INDEXED_AT_FIELD = "indexed_at"

# --- naming ----------------------------------------------------------------------------

_VERSION_SUFFIX_RE = re.compile(r"^[.-]v([1-9][0-9]*)$")


def index_name(alias: str, version: int) -> str:
    """The concrete index number `version` behind `alias`."""
    return f"{alias}.v{version}"


def index_version(alias: str, name: str) -> int | None:
    """N if `name` is the concrete index `<alias>.vN` (or the older `<alias>-vN`)."""
    if not name.startswith(alias):
        return None
    m = _VERSION_SUFFIX_RE.match(name[len(alias) :])
    return int(m.group(1)) if m else None


def next_index_name(alias: str, existing: Sequence[str]) -> str:
    """The index after the highest-numbered one of `alias` among `existing`."""
    versions = [v for v in (index_version(alias, n) for n in existing) if v is not None]
    return index_name(alias, max(versions, default=0) + 1)


# --- _source -----------------------------------------------------------------------------


def source_for(record: OutboxRecord, *, indexed_at: datetime | None = None) -> dict[str, Any]:
    """The `_source` for `record`: the live document, or a tombstone for a delete."""
    deleted = record.type is EventType.DELETED
    source: dict[str, Any] = {
        ID_FIELD: record.document_id,
        VERSION_FIELD: record.version,
        DELETED_FIELD: deleted,
        DOCUMENT_FIELD: None if deleted else record.payload,
        EVENT_ID_FIELD: record.event_id,
        COMMITTED_AT_FIELD: format_time(record.time),
    }
    if indexed_at is not None:
        source[INDEXED_AT_FIELD] = format_time(indexed_at)
    return source


def is_tombstone(source: Mapping[str, Any]) -> bool:
    """A `_source` that stands for a deleted document."""
    return bool(source.get(DELETED_FIELD))


# --- mapping -----------------------------------------------------------------------------


def index_mapping(override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mapping of a collection's index, with an optional per-collection override.

    The override (``settings.es.mappings[collection]``) describes the *document*: its
    ``properties`` become ``document.properties`` (e.g. ``{"properties": {"price":
    {"type": "double"}}}``), ``dynamic`` sets how unknown document fields are handled,
    and ``dynamic_templates`` are tried before the default string template (their
    ``path_match`` should start with ``document.``).
    """
    override = copy.deepcopy(dict(override or {}))
    templates = list(override.pop("dynamic_templates", []))
    document: dict[str, Any] = {"type": "object", "dynamic": override.pop("dynamic", True)}
    document_properties = override.pop("properties", None)
    if document_properties:
        document["properties"] = document_properties
    if override:
        raise ValueError(f"unsupported mapping override keys: {sorted(override)}")
    return {
        # Unknown top-level fields are kept in _source but not indexed: a newer indexer's
        # extra field never turns into a mapping conflict on an older index.
        "dynamic": False,
        # A string that once looked like a date must not make every later string a
        # mapping conflict.
        "date_detection": False,
        "numeric_detection": False,
        "dynamic_templates": [*templates, _DOCUMENT_STRINGS_TEMPLATE],
        "properties": {
            ID_FIELD: {"type": "keyword"},
            VERSION_FIELD: {"type": "long"},
            DELETED_FIELD: {"type": "boolean"},
            DOCUMENT_FIELD: document,
            EVENT_ID_FIELD: {"type": "keyword"},
            COMMITTED_AT_FIELD: {"type": "date"},
            INDEXED_AT_FIELD: {"type": "date"},
        },
    }
