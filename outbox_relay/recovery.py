"""Recovery from the retained outbox: the rules, as plain functions and classes.

Used when the change stream cannot resume (the checkpoint's position left the oplog), on
a relay's very first start, and when a relay's collection list gained a collection (its
position says nothing about that collection's history). Because events and checkpoint
commit atomically, Kafka holds everything up to the last checkpoint and nothing after it.
The relay (`OutboxRelay._recover`):

1. notes the cluster time T0 and opens the change stream at T0 at once, reading it into a
   bounded buffer while it works, so a recovery slower than the oplog window still finds
   its stream position alive;
2. per part of its collections (`recovery_parts`): reads back the `ce_id`s (and each
   document's highest version) that the event topics and the DLQ hold from
   `recovery_window(...).readback_since`, which starts a margin *before* the scan, since a
   record's Kafka timestamp comes from the relay's clock and its `time` from MongoDB's;
3. scans the outbox from `scan_since` (majority read concern), each document's records in
   version order, and publishes those Kafka does not hold (`VersionGate` holds back a
   version whose predecessor is not published yet: the stream delivers both, in order);
4. commits a recovering checkpoint with `recover_from = T0`: everything committed before
   T0 is in Kafka now, so a retry never rescans the window just done;
5. goes on with the buffered stream, skipping what the scan published (`SkipWindow`)
   until the stream passes the cluster time at which the scan ended; then normal
   checkpoints resume.

A record's `time` comes from MongoDB's clock inside its write transaction, so a record
committed after T0 has `time >= T0 - (longest transaction)`. The margin
(`OUTBOX_RELAY_RECOVERY_MARGIN_SECONDS`, default 120 s, twice MongoDB's 60 s transaction
lifetime limit) covers that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson.timestamp import Timestamp
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.read_concern import ReadConcern

from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from outbox_relay.scope import CollectionScope

Change = dict[str, Any]
DocKey = tuple[str, str]  # (collection, document id)
VersionKey = tuple[str, str, int]  # (collection, document id, version)


# --- what to recover, from when -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryPart:
    """Some of the relay's collections and the time from which they are recovered."""

    scope: CollectionScope
    recover_from: datetime | None  # None: every retained record


def recovery_parts(
    cp: Checkpoint, configured: CollectionScope, recover_from: datetime | None
) -> list[RecoveryPart]:
    """The collections the checkpoint covers recover from `recover_from`; added ones entirely.

    A format-1 checkpoint (`collections` None) is taken to cover the configured list: it
    predates recording the list, and the list is the one it ran with unless an operator
    changed it during the upgrade.
    """
    known = configured if cp.collections is None else CollectionScope.of(cp.collections)
    common = configured.intersect(known)
    added = configured.minus(known)
    parts = []
    if not common.is_empty:
        parts.append(RecoveryPart(common, recover_from))
    if not added.is_empty:
        parts.append(RecoveryPart(added, None))
    return parts


def collections_changed(cp: Checkpoint, configured: CollectionScope) -> bool:
    """The configured list gained a collection the checkpoint's position does not cover."""
    if cp.collections is None:
        return False
    return not configured.minus(CollectionScope.of(cp.collections)).is_empty


def needs_recovery(cp: Checkpoint, configured: CollectionScope) -> bool:
    return cp.mode is CheckpointMode.RECOVERING or collections_changed(cp, configured)


@dataclass(frozen=True, slots=True)
class RecoveryWindow:
    """Where one part's outbox scan and Kafka read-back start."""

    scan_since: datetime | None  # None: every retained record
    readback_since: datetime


def recovery_window(
    recover_from: datetime | None, oldest_retained: datetime | None, margin: timedelta
) -> RecoveryWindow | None:
    """The scan from `recover_from - margin`; the read-back another margin earlier.

    None when nothing is retained. Neither starts before the oldest retained record: what
    the outbox no longer holds cannot be re-published, so Kafka need not be read for it
    (a first start over a long event history reads only the retained window).
    """
    if oldest_retained is None:
        return None
    scan_since = None if recover_from is None else recover_from - margin
    start = oldest_retained if scan_since is None else max(scan_since, oldest_retained)
    return RecoveryWindow(scan_since=scan_since, readback_since=start - margin)


def window_outlived_retention(
    scan_since: datetime | None,
    oldest_retained: datetime | None,
    *,
    now: datetime,
    ttl: timedelta | None,
) -> bool:
    """The window starts before the oldest retained record, in what the TTL deletes.

    Then records the relay never published may have been deleted: worth an error.
    """
    if scan_since is None or oldest_retained is None or ttl is None:
        return False
    return scan_since < oldest_retained and scan_since < now - ttl


def duplicate_possible(record_time: datetime, recover_from: datetime | None) -> bool:
    """A record older than the checkpoint that Kafka's read-back did not show.

    Normally it was committed after the checkpoint (a long transaction) and this is its
    first publication; it would be a duplicate only if the read-back missed it, which its
    extra margin prevents unless the relay's clock was more than the margin behind
    MongoDB's. Either way it is published, counted and logged: the indexer absorbs it.
    """
    return recover_from is not None and record_time < recover_from


def scan_filter(since: datetime | None, scope: CollectionScope) -> dict[str, Any]:
    query: dict[str, Any] = dict(scope.mongo_filter())
    if since is not None:
        query["time"] = {"$gte": since}
    return query


async def scan_outbox(
    outbox: AsyncCollection[dict[str, Any]],
    since: datetime | None,
    scope: CollectionScope,
    batch_size: int,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Retained outbox records from `since`, each document's in version order, in batches.

    Majority read concern: a record a failover later rolls back was never acknowledged to
    its writer and must not be published.
    """
    majority = outbox.with_options(read_concern=ReadConcern("majority"))
    cursor = majority.find(
        scan_filter(since, scope),
        sort=[("collection", 1), ("document_id", 1), ("version", 1)],
        batch_size=batch_size,
        allow_disk_use=True,
    )
    batch: list[dict[str, Any]] = []
    async for raw in cursor:
        batch.append(raw)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


async def find_missing(
    outbox: AsyncCollection[dict[str, Any]],
    missing: Mapping[DocKey, list[tuple[int, int]]],
    since: datetime | None,
) -> list[dict[str, Any]]:
    """The retained records of these version ranges (inclusive) from `since`.

    Through the `(collection, document_id, version)` index, never the `time` index, with
    majority read concern: every version below one the scan saw is committed already, so
    this finds each of them that is retained, whatever the scan missed. One query per
    collection (`$in` of document ids; the ranges are applied here), not one per range.
    """
    by_collection: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for (collection, document_id), ranges in missing.items():
        by_collection.setdefault(collection, {})[document_id] = ranges
    majority = outbox.with_options(read_concern=ReadConcern("majority"))
    found: list[dict[str, Any]] = []
    for collection, docs in by_collection.items():
        top = max(hi for ranges in docs.values() for _, hi in ranges)
        query: dict[str, Any] = {
            "collection": collection,
            "document_id": {"$in": sorted(docs)},
            "version": {"$lte": top},
        }
        if since is not None:
            query["time"] = {"$gte": since}
        cursor = majority.find(query, hint=[("collection", 1), ("document_id", 1), ("version", 1)])
        async for raw in cursor:
            ranges = docs.get(str(raw.get("document_id")), [])
            version = raw.get("version")
            if isinstance(version, int) and any(lo <= version <= hi for lo, hi in ranges):
                found.append(raw)
    return found


# --- per-document order ---------------------------------------------------------------------


def record_key(raw: Mapping[str, Any]) -> VersionKey | None:
    """(collection, document id, version) of a stored record; None if it is malformed."""
    collection, document_id, version = (
        raw.get("collection"),
        raw.get("document_id"),
        raw.get("version"),
    )
    if not isinstance(collection, str) or not isinstance(document_id, str):
        return None
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    return collection, document_id, version


class VersionGate:
    """Publishes a document's versions only after every earlier one not yet in Kafka.

    A scan can see v(n+1) of a hot document and miss v(n) when v(n) committed after the
    scan passed it (its `time` was taken before v(n+1)'s, its commit came later); it can
    also miss a record through a faulty index. Publishing v(n+1) then would put it ahead
    of v(n). So before each scanned version the gate names the versions missing between
    it and the last one published (`missing`), the relay fetches them by document and
    version (`find_missing`: all committed, since a later version is), and `fill` puts
    them in front, in order. The stream later skips them like every scanned record.

    A version counts as published when Kafka holds it or a later one (event or dead
    letter) or this scan published it; one older than the window is covered by the
    checkpoint, so `find_missing` only looks inside the window.
    """

    def __init__(self, published_versions: Mapping[DocKey, int]) -> None:
        self._last: dict[DocKey, int] = dict(published_versions)

    def missing(self, records: Iterable[Mapping[str, Any]]) -> dict[DocKey, list[tuple[int, int]]]:
        """Per document, the version ranges (inclusive) absent before these records."""
        expected: dict[DocKey, int] = {}
        gaps: dict[DocKey, list[tuple[int, int]]] = {}
        for raw in records:
            key = record_key(raw)
            if key is None:
                continue
            collection, document_id, version = key
            doc = (collection, document_id)
            nxt = expected.get(doc, self._last.get(doc, 0) + 1)
            if version > nxt:
                gaps.setdefault(doc, []).append((nxt, version - 1))
            expected[doc] = max(nxt, version + 1)
        return gaps

    def fill(
        self, records: Iterable[Mapping[str, Any]], found: Iterable[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """`records` with the `found` missing versions in front of them, in version order."""
        merged: dict[object, Mapping[str, Any]] = {}
        for raw in [*records, *found]:
            merged.setdefault(raw.get("_id"), raw)
        ordered = sorted(merged.values(), key=_scan_order)
        for raw in ordered:
            key = record_key(raw)
            if key is not None:
                doc = (key[0], key[1])
                self._last[doc] = max(self._last.get(doc, 0), key[2])
        return ordered


def _scan_order(raw: Mapping[str, Any]) -> tuple[int, str, str, int]:
    """The scan's order; a malformed record (no usable key) goes last, in its own order."""
    key = record_key(raw)
    if key is None:
        return (1, "", "", 0)
    return (0, key[0], key[1], key[2])


# --- after the scan: the stream skips what the scan published --------------------------------


class SkipWindow:
    """Event ids the stream must not publish again, until it passes `until`."""

    def __init__(self, ids: set[str], until: Timestamp) -> None:
        self.ids = ids
        self.until = until

    def passed(self, cluster_time: Timestamp | None) -> bool:
        return cluster_time is not None and cluster_time > self.until

    def covers(self, cluster_time: Timestamp | None, event_id: object) -> bool:
        """Skip this change: the scan (or an earlier run) published it already."""
        if cluster_time is not None and cluster_time > self.until:
            return False  # committed after the scan ended: the scan cannot have seen it
        return str(event_id) in self.ids


def skip_scanned(
    changes: list[Change], batch_cluster_time: Timestamp | None, skip: SkipWindow | None
) -> tuple[list[Change], SkipWindow | None]:
    """The changes of one stream batch still to publish, and the window for the next batch.

    Each change is judged by its own cluster time *before* the window is dropped: a batch
    that straddles the end of the scan must still skip the scanned ids it starts with.
    The window is gone (None) once the batch's position is past the end of the scan.
    """
    if skip is None:
        return changes, None
    kept = [
        c for c in changes if not skip.covers(c.get("clusterTime"), c["fullDocument"].get("_id"))
    ]
    return kept, None if skip.passed(batch_cluster_time) else skip
