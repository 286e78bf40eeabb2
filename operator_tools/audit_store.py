"""The audit's working set: an on-disk SQLite database in a temporary directory.

The three views (outbox records, Kafka messages, Elasticsearch entries) are loaded into
tables and joined by SQL that streams its results, so the audit's memory stays flat
however many events a deployment holds: SQLite keeps a bounded page cache and spills
sorts to temporary files. Only the standard library is involved.

Not thread-safe: the audit runs one call at a time, in a worker thread or on the loop.
"""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from operator_tools.audit_rules import Copy, Placed, State

# The page cache: SQLite's memory stays within this, whatever the data size.
CACHE_KIB = 64 * 1024

_SCHEMA = """
CREATE TABLE record (
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    content TEXT,
    time REAL NOT NULL,
    PRIMARY KEY (event_id, topic)
) WITHOUT ROWID;
CREATE INDEX record_document ON record (collection, document_id, version);

CREATE TABLE message (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    replayed INTEGER NOT NULL,
    event_time REAL NOT NULL
);
CREATE INDEX message_event ON message (event_id, topic);
CREATE INDEX message_document ON message (topic, key);

CREATE TABLE indexed (
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    content TEXT,
    PRIMARY KEY (collection, document_id)
) WITHOUT ROWID;

CREATE TABLE committed (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;

CREATE TABLE ask (
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    content TEXT,
    PRIMARY KEY (collection, document_id)
) WITHOUT ROWID;
"""


def _ts(t: datetime) -> float:
    return t.timestamp()


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class RecordRow:
    """An outbox record as the audit keeps it."""

    event_id: str
    topic: str
    collection: str
    document_id: str
    version: int
    deleted: bool
    content: str | None
    time: datetime


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A message of an event topic as the audit keeps it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str
    event_id: str  # "" when the message has no ce_id
    version: int  # 0 when it has no usable ce_aggregateversion
    replayed: bool
    event_time: datetime  # ce_time, else the Kafka timestamp


@dataclass(frozen=True, slots=True)
class NewestRow:
    """A document of the window: its newest record, where Kafka has it, what the index has."""

    record: RecordRow
    in_kafka: bool
    acknowledged: bool
    index: State | None


class AuditStore:
    """Load the views with `add_*`, then stream the joins the rules need."""

    def __init__(self, path: Path) -> None:
        # check_same_thread=False: loads run in worker threads, one call at a time.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for pragma in (
            "journal_mode = OFF",  # a scratch database: nothing to recover after a crash
            "synchronous = OFF",
            f"cache_size = -{CACHE_KIB}",
            "temp_store = FILE",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)

    @classmethod
    @contextmanager
    def temporary(cls) -> Iterator[AuditStore]:
        """A store in a fresh temporary directory (`TMPDIR`), deleted on exit."""
        with tempfile.TemporaryDirectory(prefix="outbox-audit-") as directory:
            store = cls(Path(directory) / "audit.sqlite3")
            try:
                yield store
            finally:
                store.close()

    def close(self) -> None:
        self._db.close()

    def _insert(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        self._db.execute("BEGIN")
        try:
            self._db.executemany(sql, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- loading -------------------------------------------------------------------------

    def add_records(self, rows: Iterable[RecordRow]) -> None:
        """Outbox records; one seen twice (a late look-up) is kept once."""
        self._insert(
            "INSERT OR IGNORE INTO record VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    r.event_id,
                    r.topic,
                    r.collection,
                    r.document_id,
                    r.version,
                    int(r.deleted),
                    r.content,
                    _ts(r.time),
                )
                for r in rows
            ),
        )

    def add_messages(self, rows: Iterable[MessageRow]) -> None:
        self._insert(
            "INSERT INTO message VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    m.topic,
                    m.partition,
                    m.offset,
                    m.timestamp_ms,
                    m.key,
                    m.event_id,
                    m.version,
                    int(m.replayed),
                    _ts(m.event_time),
                )
                for m in rows
            ),
        )

    def add_indexed(self, collection: str, entries: Iterable[tuple[str, State]]) -> None:
        """Elasticsearch's entries of `collection`; a later look-up replaces a scanned one."""
        self._insert(
            "INSERT OR REPLACE INTO indexed VALUES (?, ?, ?, ?, ?)",
            ((collection, doc_id, s.version, int(s.deleted), s.content) for doc_id, s in entries),
        )

    def set_committed(self, offsets: Iterable[tuple[str, int, int]]) -> None:
        """The indexer group's committed offsets: (topic, partition, next offset)."""
        self._insert("INSERT OR REPLACE INTO committed VALUES (?, ?, ?)", offsets)

    def add_ask(self, collection: str, doc_id: str, index: State) -> None:
        """An index entry to judge against MongoDB's current document."""
        self._db.execute(
            "INSERT OR REPLACE INTO ask VALUES (?, ?, ?, ?, ?)",
            (collection, doc_id, index.version, int(index.deleted), index.content),
        )

    # --- counting ------------------------------------------------------------------------

    def _count(self, sql: str) -> int:
        return int(self._db.execute(sql).fetchone()[0])

    def records(self) -> int:
        return self._count("SELECT count(*) FROM record")

    def messages(self) -> int:
        return self._count("SELECT count(*) FROM message")

    def documents(self) -> int:
        return self._count(
            "SELECT count(*) FROM (SELECT DISTINCT collection, document_id FROM record)"
        )

    def indexed(self) -> int:
        return self._count("SELECT count(*) FROM indexed")

    def document_streams(self) -> int:
        return self._count("SELECT count(*) FROM (SELECT DISTINCT topic, key FROM message)")

    def collections(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT collection FROM record")]

    # --- the joins -----------------------------------------------------------------------

    def unknown_event_ids(self, since: datetime, batch: int) -> Iterator[list[str]]:
        """Ids of original messages of the window that no loaded record has, in batches.

        Keyset pages: the caller may add records between two pages.
        """
        after = ""
        while True:
            ids = [
                r[0]
                for r in self._db.execute(
                    """
                    SELECT DISTINCT m.event_id FROM message m
                    WHERE m.event_id > ? AND m.replayed = 0 AND m.event_time >= ?
                      AND NOT EXISTS (SELECT 1 FROM record r WHERE r.event_id = m.event_id)
                    ORDER BY m.event_id LIMIT ?
                    """,
                    (after, _ts(since), batch),
                )
            ]
            if not ids:
                return
            yield ids
            after = ids[-1]

    def events(self) -> Iterator[tuple[RecordRow, list[Copy]]]:
        """Every record with its copies in its own topic, one record at a time."""
        cursor = self._db.execute(
            """
            SELECT r.event_id, r.topic, r.collection, r.document_id, r.version, r.deleted,
                   r.content, r.time, m.partition, m.offset, m.replayed
            FROM record r
            LEFT JOIN message m ON m.event_id = r.event_id AND m.topic = r.topic
            ORDER BY r.event_id, r.topic, m.partition, m.offset
            """
        )
        for _, group in itertools.groupby(cursor, key=lambda row: (row[0], row[1])):
            rows = list(group)
            first = rows[0]
            record = RecordRow(
                first[0],
                first[1],
                first[2],
                first[3],
                first[4],
                bool(first[5]),
                first[6],
                _dt(first[7]),
            )
            copies = [Copy(r[1], r[8], r[9], bool(r[10])) for r in rows if r[8] is not None]
            yield record, copies

    def unknown_messages(self) -> Iterator[MessageRow]:
        """Messages whose event id is in no record of their topic's collection."""
        cursor = self._db.execute(
            """
            SELECT m.topic, m.partition, m.offset, m.timestamp_ms, m.key, m.event_id,
                   m.version, m.replayed, m.event_time
            FROM message m
            WHERE NOT EXISTS (
                SELECT 1 FROM record r WHERE r.event_id = m.event_id AND r.topic = m.topic
            )
            ORDER BY m.topic, m.partition, m.offset
            """
        )
        for r in cursor:
            yield MessageRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), _dt(r[8]))

    def streams(self) -> Iterator[tuple[str, str, list[Placed]]]:
        """Each document's messages (one topic and key), for the order rules.

        Only events a record of the window backs count for order: an unknown event
        inside the window is already a duplicate, one older than the window is not judged.
        """
        cursor = self._db.execute(
            """
            SELECT m.topic, m.key, m.partition, m.offset, m.timestamp_ms, m.event_id,
                   m.version, m.replayed,
                   EXISTS (
                       SELECT 1 FROM record r WHERE r.event_id = m.event_id AND r.topic = m.topic
                   ) AS counted
            FROM message m
            ORDER BY m.topic, m.key
            """
        )
        for (topic, key), group in itertools.groupby(cursor, key=lambda row: (row[0], row[1])):
            placed = [
                Placed(r[2], r[3], r[4], r[5] or f"@{r[2]}:{r[3]}", r[6], bool(r[7]), bool(r[8]))
                for r in group
            ]
            yield topic, key, placed

    def newest(self) -> Iterator[NewestRow]:
        """Each document of the window with its newest record and its index entry."""
        cursor = self._db.execute(
            """
            WITH ranked AS (
                SELECT r.*, row_number() OVER (
                    PARTITION BY r.collection, r.document_id ORDER BY r.version DESC, r.time DESC
                ) AS n
                FROM record r
            )
            SELECT n.event_id, n.topic, n.collection, n.document_id, n.version, n.deleted,
                   n.content, n.time,
                   EXISTS (
                       SELECT 1 FROM message m WHERE m.event_id = n.event_id AND m.topic = n.topic
                   ),
                   EXISTS (
                       SELECT 1 FROM message m
                       JOIN committed c ON c.topic = m.topic AND c.partition = m.partition
                       WHERE m.event_id = n.event_id AND m.topic = n.topic AND m.offset < c.offset
                   ),
                   i.version, i.deleted, i.content
            FROM ranked n
            LEFT JOIN indexed i ON i.collection = n.collection AND i.document_id = n.document_id
            WHERE n.n = 1
            """
        )
        for r in cursor:
            record = RecordRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], _dt(r[7]))
            index = None if r[10] is None else State(r[10], bool(r[11]), r[12])
            yield NewestRow(record, bool(r[8]), bool(r[9]), index)

    def not_indexed(self, collection: str, batch: int) -> Iterator[list[str]]:
        """Documents of the window the index scan did not return, in keyset batches."""
        after = ""
        while True:
            ids = [
                r[0]
                for r in self._db.execute(
                    """
                    SELECT DISTINCT r.document_id FROM record r
                    WHERE r.collection = ? AND r.document_id > ? AND NOT EXISTS (
                        SELECT 1 FROM indexed i
                        WHERE i.collection = r.collection AND i.document_id = r.document_id
                    )
                    ORDER BY r.document_id LIMIT ?
                    """,
                    (collection, after, batch),
                )
            ]
            if not ids:
                return
            yield ids
            after = ids[-1]

    def orphans(self) -> Iterator[tuple[str, str, State]]:
        """Index entries of the window whose document has no record in it."""
        cursor = self._db.execute(
            """
            SELECT i.collection, i.document_id, i.version, i.deleted, i.content FROM indexed i
            WHERE NOT EXISTS (
                SELECT 1 FROM record r
                WHERE r.collection = i.collection AND r.document_id = i.document_id
            )
            """
        )
        for r in cursor:
            yield r[0], r[1], State(r[2], bool(r[3]), r[4])

    def asks(self, batch: int) -> Iterator[tuple[str, list[tuple[str, State]]]]:
        """Entries queued by `add_ask`, one collection's batch at a time (keyset pages)."""
        after = ("", "")
        while True:
            rows = self._db.execute(
                """
                SELECT collection, document_id, version, deleted, content FROM ask
                WHERE (collection, document_id) > (?, ?)
                ORDER BY collection, document_id LIMIT ?
                """,
                (*after, batch),
            ).fetchall()
            if not rows:
                return
            for collection, group in itertools.groupby(rows, key=lambda r: r[0]):
                yield collection, [(r[1], State(r[2], bool(r[3]), r[4])) for r in group]
            after = (rows[-1][0], rows[-1][1])
