"""What an outbox event does to the search index: pure rules, no I/O.

Every event becomes one *index* operation with ``version_type=external`` and the
document's version as the external version, so Elasticsearch itself refuses anything
that is not newer than what it holds (a 409 that means "already applied"). A delete is
**not** an Elasticsearch delete: it indexes a *tombstone* at the delete's version.
Elasticsearch forgets the version of a really deleted document (after
``index.gc_deletes``; the stand-in at once), after which a stale create would be
accepted again; a tombstone keeps the version, so a stale event can never resurrect a
deleted document. Search filters tombstones out (`LIVE_FILTER`). A re-created document
continues its version (MongoDB keeps the tombstone at version + 1), so it overwrites the
tombstone normally.

The `_source` of every indexed document (one layout, also built by the operator tools
through `source_for`)::

    {
      "id": "<document id>",            # keyword; search's tiebreaker sort
      "version": 7,                     # long; equals the external _version
      "deleted": false,                 # true for a tombstone
      "document": {...} | null,         # the document after the write; null in a tombstone
      "event_id": "<outbox event id>",  # keyword
      "committed_at": "<RFC 3339>",     # when the write committed (outbox record time)
      "indexed_at": "<RFC 3339>"        # when the indexer built this source
    }

Each collection has its own concrete index (`initial_index_name`, ``<alias>-v1``) behind
the alias ``settings.es.alias_for(collection)``; the indexer writes and search reads
through the alias, so ``outbox reindex`` can build ``<alias>-v2`` and swap the alias.

Tombstone purge: removing a tombstone is only safe once no event older than it can
still arrive (Kafka retention of every topic that could replay it, the outbox TTL for
`outbox replay`, and the DLQ for redrive have all passed). Nothing purges automatically;
`tombstone_purge_query` gives the operator tooling the query for a delete-by-query.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from infra.envelope import EventType, OutboxRecord, format_time
from infra.naming import is_collection_name

# Elasticsearch refuses ids longer than 512 bytes; the API allows far shorter ones.
MAX_ID_BYTES = 512

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


class ProjectionError(ValueError):
    """An event that decodes but can never be indexed (a poison event)."""


@dataclass(frozen=True, slots=True)
class IndexAction:
    """One bulk ``index`` operation: external-versioned, never a real delete."""

    alias: str
    collection: str
    document_id: str
    version: int
    source: dict[str, Any]

    @property
    def deleted(self) -> bool:
        return bool(self.source[DELETED_FIELD])

    def bulk_header(self) -> dict[str, Any]:
        return {
            "index": {
                "_index": self.alias,
                "_id": self.document_id,
                "version": self.version,
                "version_type": "external",
            }
        }


def source_for(record: OutboxRecord, *, indexed_at: datetime | None = None) -> dict[str, Any]:
    """The `_source` for `record`: the live document, or a tombstone for a delete."""
    deleted = record.type is EventType.DELETED
    source: dict[str, Any] = {
        ID_FIELD: record.document_id,
        VERSION_FIELD: record.version,
        DELETED_FIELD: deleted,
        DOCUMENT_FIELD: None if deleted else record.payload,
        "event_id": record.event_id,
        "committed_at": format_time(record.time),
    }
    if indexed_at is not None:
        source["indexed_at"] = format_time(indexed_at)
    return source


def check_indexable(record: OutboxRecord, *, topic_collection: str | None = None) -> None:
    """Raise `ProjectionError` for an event no retry could ever index."""
    if not is_collection_name(record.collection):
        raise ProjectionError(f"collection name {record.collection!r} is not indexable")
    if topic_collection is not None and topic_collection != record.collection:
        raise ProjectionError(
            f"ce_source names collection {record.collection!r} "
            f"but the topic is for {topic_collection!r}"
        )
    if len(record.document_id.encode()) > MAX_ID_BYTES:
        raise ProjectionError(f"document id longer than {MAX_ID_BYTES} bytes")
    if record.type is not EventType.DELETED and record.payload is None:
        raise ProjectionError(f"a {record.type.value} event without a document")


def action_for(
    record: OutboxRecord, *, alias: str, indexed_at: datetime | None = None
) -> IndexAction:
    """The index operation for one event (raises `ProjectionError` for a poison event)."""
    check_indexable(record)
    return IndexAction(
        alias=alias,
        collection=record.collection,
        document_id=record.document_id,
        version=record.version,
        source=source_for(record, indexed_at=indexed_at),
    )


def supersedes(new_version: int, stored_version: int | None) -> bool:
    """Elasticsearch's ``external`` rule: a write applies only if strictly newer."""
    return stored_version is None or new_version > stored_version


def latest_per_document(actions: Iterable[IndexAction]) -> dict[tuple[str, str], IndexAction]:
    """Within one batch only each document's newest action matters; the rest would 409.

    Keys are (alias, document id); on equal versions the first one wins, as in
    Elasticsearch, where the second would conflict.
    """
    latest: dict[tuple[str, str], IndexAction] = {}
    for action in actions:
        key = (action.alias, action.document_id)
        current = latest.get(key)
        if current is None or supersedes(action.version, current.version):
            latest[key] = action
    return latest


def initial_index_name(alias: str) -> str:
    """The concrete index created behind `alias` on a collection's first event."""
    return f"{alias}-v1"


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
            "event_id": {"type": "keyword"},
            "committed_at": {"type": "date"},
            "indexed_at": {"type": "date"},
        },
    }


def tombstone_purge_query(*, committed_before: datetime) -> dict[str, Any]:
    """Query selecting tombstones old enough to purge, for a delete-by-query.

    Only safe when no event older than `committed_before` can still be delivered or
    replayed (Kafka retention, outbox TTL, DLQ contents): a purged tombstone no longer
    stops a stale create. Pass a cut-off well behind all of them.
    """
    return {
        "bool": {
            "filter": [
                {"term": {DELETED_FIELD: True}},
                {"range": {"committed_at": {"lt": format_time(committed_before)}}},
            ]
        }
    }


def default_purge_cutoff(now: datetime, *, retention: timedelta) -> datetime:
    """A cut-off a full retention period (plus a day of margin) behind `now`."""
    return now - retention - timedelta(days=1)
