"""What a write produces, as pure functions: new version, event type, stored state, outbox record.

The document store reads the current state inside a transaction, asks `plan_write` what
to do, and writes exactly what the plan says. Versions only grow: a delete leaves a
tombstone at the next version, and a later create continues from it, so Elasticsearch
(which compares external versions) never sees a re-created document as stale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.validation import InvalidInputError, encoded_size, merge_patch
from infra.document_layout import DOCUMENT, VERSION, is_tombstone, stored_document
from infra.envelope import EventType, OutboxRecord


class WriteRejectedError(Exception):
    """The current state forbids the write; nothing is written."""


class DocumentNotFoundError(WriteRejectedError):
    """No live document with that id (HTTP 404)."""


class DocumentExistsError(WriteRejectedError):
    """A create hit a live document (HTTP 409)."""


class PreconditionFailedError(WriteRejectedError):
    """`If-Match` did not match the current version (HTTP 412)."""


class DocumentTooLargeError(InvalidInputError):
    """A merge patch would grow the document past the size limit (HTTP 422)."""


@dataclass(frozen=True, slots=True)
class StoredState:
    """A document as the collection holds it; `document is None` for a tombstone."""

    version: int
    document: dict[str, Any] | None

    @property
    def live(self) -> bool:
        return self.document is not None

    @classmethod
    def from_mongo(cls, raw: dict[str, Any] | None) -> StoredState | None:
        if raw is None:
            return None
        document = None if is_tombstone(raw) else raw[DOCUMENT]
        return cls(version=int(raw[VERSION]), document=document)


# --- If-Match --------------------------------------------------------------------------

_ETAG_RE = re.compile(r'^(?:W/)?"([^"]*)"$')
MAX_VERSION_DIGITS = 19


@dataclass(frozen=True, slots=True)
class IfMatch:
    """A parsed `If-Match`: `*`, or the versions it names (unparseable tags never match)."""

    any: bool = False
    versions: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, header: str | None) -> IfMatch | None:
        """`"3"`, `3`, `W/"3"`, `"3", "4"` or `*`; None when the header is absent."""
        if header is None:
            return None
        text = header.strip()
        if text == "*":
            return cls(any=True)
        versions: set[int] = set()
        for part in text.split(","):
            tag = part.strip()
            m = _ETAG_RE.fullmatch(tag)
            value = m.group(1) if m else tag
            # No version has more than 19 digits (int64); a longer run names none, and
            # int() of thousands of digits raises instead of answering 412.
            if value.isascii() and value.isdigit() and len(value) <= MAX_VERSION_DIGITS:
                versions.add(int(value))
        return cls(versions=frozenset(versions))

    def matches(self, current: StoredState | None) -> bool:
        """RFC 9110: a missing (or deleted) document matches nothing, not even `*`."""
        if current is None or not current.live:
            return False
        return self.any or current.version in self.versions


def etag(version: int) -> str:
    return f'"{version}"'


# --- Commands and plans ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    """POST: a new document; a live one with the same id is a conflict."""

    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Replace:
    """PUT: replace the document, or create it."""

    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Patch:
    """PATCH: an RFC 7396 merge patch onto a live document."""

    patch: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delete:
    """DELETE: leave a tombstone at the next version."""


Command = Create | Replace | Patch | Delete


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What one write stores and announces."""

    version: int
    type: EventType
    document: dict[str, Any] | None  # the document after the write; None for a delete

    def to_mongo(self, document_id: str, now: datetime) -> dict[str, Any]:
        """The stored form (`infra/document_layout`)."""
        return stored_document(document_id, self.version, self.document, now)

    def outbox_record(
        self,
        *,
        event_id: str,
        collection: str,
        document_id: str,
        time: datetime,
        traceparent: str | None,
        auth_id: str | None = None,
    ) -> OutboxRecord:
        return OutboxRecord(
            event_id=event_id,
            collection=collection,
            document_id=document_id,
            version=self.version,
            type=self.type,
            payload=self.document,
            time=time,
            traceparent=traceparent,
            auth_id=auth_id,
        )


def plan_write(
    current: StoredState | None,
    command: Command,
    *,
    if_match: IfMatch | None = None,
    max_document_bytes: int | None = None,
) -> WritePlan:
    """Decide a write from the current state; raise `WriteRejectedError` or `InvalidInputError`."""
    if if_match is not None and not if_match.matches(current):
        found = "no document" if current is None or not current.live else etag(current.version)
        raise PreconditionFailedError(f"If-Match does not match the current version ({found})")
    live = current is not None and current.live
    next_version = 1 if current is None else current.version + 1
    match command:
        case Create(document=document):
            if live:
                assert current is not None
                raise DocumentExistsError(f"document already exists at version {current.version}")
            return WritePlan(next_version, EventType.CREATED, document)
        case Replace(document=document):
            return WritePlan(
                next_version, EventType.UPDATED if live else EventType.CREATED, document
            )
        case Patch(patch=patch):
            if not live:
                raise DocumentNotFoundError("document not found")
            assert current is not None
            merged = merge_patch(current.document, patch)
            if max_document_bytes is not None and encoded_size(merged) > max_document_bytes:
                raise DocumentTooLargeError(
                    f"the patched document would exceed {max_document_bytes} bytes"
                )
            return WritePlan(next_version, EventType.UPDATED, merged)
        case Delete():
            if not live:
                raise DocumentNotFoundError("document not found")
            return WritePlan(next_version, EventType.DELETED, None)
    raise AssertionError(f"unknown command {command!r}")  # pragma: no cover
