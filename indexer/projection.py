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

Every action names the collection's *alias* with ``require_alias``: should the alias be
missing, Elasticsearch answers 404 instead of auto-creating a concrete index with the
alias's name (default mappings, and a name no alias can take afterwards), and it never
writes into a concrete index that happens to carry the alias's name.

The `_source` layout, index naming and mapping are the shared contract in
`infra/index_layout.py`, what a document may map in `infra/index_limits.py`; this module
only decides which action an event becomes, and which events no retry could ever index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from infra.envelope import EventType, OutboxRecord
from infra.index_layout import DELETED_FIELD, source_for
from infra.index_limits import IndexLimitError, IndexLimits, check_document_limits
from infra.naming import is_collection_name

# Elasticsearch refuses ids longer than 512 bytes; the API allows far shorter ones.
MAX_ID_BYTES = 512


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

    def bulk_header(self, *, require_alias: bool = True) -> dict[str, Any]:
        header: dict[str, Any] = {
            "_index": self.alias,
            "_id": self.document_id,
            "version": self.version,
            "version_type": "external",
        }
        if require_alias:
            header["require_alias"] = True
        return {"index": header}

    def ndjson(self, *, require_alias: bool = True) -> bytes:
        """The action's two lines of a bulk request body, newline-terminated."""
        return b"%s\n%s\n" % (
            orjson.dumps(self.bulk_header(require_alias=require_alias)),
            orjson.dumps(self.source),
        )


def check_indexable(
    record: OutboxRecord,
    *,
    topic_collection: str | None = None,
    limits: IndexLimits | None = None,
) -> None:
    """Raise `ProjectionError` for an event no retry could ever index.

    With `limits`, a document past them is one (`infra.index_limits`): Elasticsearch would
    refuse it, and the stand-in would index what the real server refuses.
    """
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
    if limits is not None and record.payload is not None:
        try:
            check_document_limits(record.payload, limits)
        except IndexLimitError as e:
            raise ProjectionError(str(e)) from e


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
