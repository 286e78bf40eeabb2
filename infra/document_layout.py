"""The MongoDB side of the contract: how a REST collection stores one document.

``{_id, version, document, deleted, updated_at}``: the API writes it, the operator tools
(status, reconcile, reindex) read it. A deleted document stays as a *tombstone*
(`deleted: true`, `document: null`) that keeps its version, so a re-created document
continues from it and never loses against the index's tombstone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

VERSION = "version"
DOCUMENT = "document"
DELETED = "deleted"
UPDATED_AT = "updated_at"

# Live documents, as a query: not marked deleted and holding a document.
LIVE_QUERY: dict[str, Any] = {DELETED: {"$ne": True}, DOCUMENT: {"$ne": None}}


def stored_document(
    document_id: str, version: int, document: dict[str, Any] | None, updated_at: datetime
) -> dict[str, Any]:
    """The stored form of `document` at `version`; None makes a tombstone."""
    return {
        "_id": document_id,
        VERSION: version,
        DOCUMENT: document,
        DELETED: document is None,
        UPDATED_AT: updated_at,
    }


def is_tombstone(raw: Mapping[str, Any]) -> bool:
    """A stored document that stands for a deleted one (the inverse of `LIVE_QUERY`)."""
    return bool(raw.get(DELETED)) or raw.get(DOCUMENT) is None
