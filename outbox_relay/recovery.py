"""History-loss recovery: re-publish from the retained outbox collection, skipping what Kafka has.

Used when the change stream cannot resume (the checkpoint's position left the oplog) and
on a relay's very first start. Because events and checkpoint commit atomically, Kafka
holds everything up to the last checkpoint and nothing after it. The relay:

1. notes the cluster time T0;
2. reads back the `ce_id`s of its event topics from `recover_from - margin`
   (read_committed; `recover_from` is the checkpoint's time, None on a first start);
3. scans the outbox for records with `time >= recover_from - margin`, each document's
   records in version order, and publishes those whose id Kafka does not hold, in Kafka
   transactions whose checkpoints say "recovering from `recover_from`";
4. resumes the change stream at T0, skipping the ids the scan published, until the
   stream passes the cluster time at which the scan ended; then normal checkpoints resume.

A crash anywhere before step 4 completes restarts the recovery from the same place;
the read-back makes the repeat publish nothing twice. The margin
(`OUTBOX_RELAY_RECOVERY_MARGIN_SECONDS`, default 120 s, more than MongoDB's 60 s
transaction lifetime limit) covers transactions in flight at the checkpoint (a record's
`time` is set before its transaction commits) and clock skew between API hosts and the
relay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from bson.timestamp import Timestamp
from pymongo.asynchronous.collection import AsyncCollection

Change = dict[str, Any]


def scan_since(recover_from: datetime | None, margin: timedelta) -> datetime | None:
    """Where the outbox scan and the Kafka read-back start."""
    return None if recover_from is None else recover_from - margin


def duplicate_possible(record_time: datetime, recover_from: datetime | None) -> bool:
    """A record older than the checkpoint that Kafka's read-back did not show.

    Normally it was committed after the checkpoint (a long transaction) and this is its
    first publication; if the read-back missed it (producer clock far behind), it is a
    duplicate. Either way it is published, counted and logged: the indexer absorbs it.
    """
    return recover_from is not None and record_time < recover_from


def scan_filter(since: datetime | None, collections: list[str]) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if since is not None:
        query["time"] = {"$gte": since}
    if collections:
        query["collection"] = {"$in": list(collections)}
    return query


async def scan_outbox(
    outbox: AsyncCollection[dict[str, Any]],
    since: datetime | None,
    collections: list[str],
    batch_size: int,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Retained outbox records from `since`, each document's in version order, in batches."""
    cursor = outbox.find(
        scan_filter(since, collections),
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
