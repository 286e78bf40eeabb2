"""A hostile writer: the write mix that once stopped the indexer for everyone (issue 11).

`hostile_writes` runs it against a running pipeline and returns what the pipeline must
show afterwards (`HostileExpectations`): which collections must match MongoDB exactly,
which hold dead-lettered versions, which stay parked until an operator acts, and which
events must be in the DLQ exactly once. The integration test
(`tests/integration/indexer/test_hostile_writer.py`) and the fault harness use it.

The mix:

- **a legacy index**: `books` lives in `<alias>-v1`, as a deployment from before the
  `.v<N>` naming has it (created here when `books` has no index yet);
- **`books` and `books-v1`** through the API: `books-v1`'s alias name is `books`'s legacy
  index, so the indexer parks `books-v1` until `outbox reindex books` frees the name;
- **a mapping conflict** through the API: `conflicts/c1` maps `price` as a number; then,
  right after each other, a valid version and a newest one with a string price (poison:
  whether the two share a batch or not, the valid one is indexed and the poison one
  dead-lettered), and `conflicts/c2` with a string price (poison);
- **each Elasticsearch limit + 1** through the API (each answered 422, nothing written)
  and straight to Kafka, as a writer without the API would (each dead-lettered); each
  limit exactly reached through the API (indexed);
- **a batch over the byte cap**: documents whose total is well over `over_bytes`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import httpx
from confluent_kafka import Producer
from elasticsearch import AsyncElasticsearch

from infra.envelope import EventType, OutboxRecord
from infra.index_layout import index_mapping
from infra.kafka import ensure_topics, event_topic_config, producer_config
from infra.settings import Settings

LEGACY_COLLECTION = "books"
SQUATTER_COLLECTION = "books-v1"
CONFLICT_COLLECTION = "conflicts"
EDGE_COLLECTION = "edge"  # documents exactly at each limit
DIRECT_COLLECTION = "limits"  # written straight to Kafka, every event poison
BULK_COLLECTION = "bulk"


def _nest(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


def at_the_limits(settings: Settings) -> dict[str, dict[str, Any]]:
    """One document exactly at each limit (`infra.index_limits`): Elasticsearch takes it."""
    es = settings.es
    numbers = es.total_fields_limit - 7  # the envelope maps 7
    return {
        "fields": {f"f{i}": i for i in range(numbers)},
        "depth": _nest(es.depth_limit - 1),  # the `document` object is one level
        "key": {"k" * es.field_name_max_chars: 1},
    }


def over_the_limits(settings: Settings) -> dict[str, dict[str, Any]]:
    """One document one past each limit, plus field names Elasticsearch refuses."""
    es = settings.es
    numbers = es.total_fields_limit - 7
    return {
        "fields": {f"f{i}": i for i in range(numbers + 1)},
        "strings": {f"s{i}": "x" for i in range(numbers // 2 + 1)},  # text + .keyword each
        "depth": _nest(es.depth_limit),
        "key": {"k" * (es.field_name_max_chars + 1): 1},
        "empty-key": {"": 1},
        "blank-key": {" ": 1},
    }


@dataclass
class HostileExpectations:
    """What the pipeline must show once the hostile writes are through."""

    clean: set[str] = field(default_factory=set)  # Elasticsearch must equal MongoDB
    # collection → {document id: the version Elasticsearch ends at, None: not indexed}
    # for the documents whose newest version is poison; the others must match MongoDB.
    poisoned: dict[str, dict[str, int | None]] = field(default_factory=dict)
    parked: set[str] = field(default_factory=set)  # until `outbox reindex books`
    dead_letters: Counter[str] = field(default_factory=Counter)  # ce_id → times in the DLQ
    refused: dict[str, int] = field(default_factory=dict)  # over-limit body → API status


@dataclass
class HostileWriter:
    """The clients the mix writes through."""

    api: httpx.AsyncClient
    headers: dict[str, str]  # a writer's Authorization
    settings: Settings
    es: AsyncElasticsearch

    async def _put(self, collection: str, doc_id: str, body: dict[str, Any]) -> httpx.Response:
        return await self.api.put(
            f"/v1/collections/{collection}/documents/{doc_id}", json=body, headers=self.headers
        )

    async def _written(self, collection: str, doc_id: str, body: dict[str, Any]) -> str:
        r = await self._put(collection, doc_id, body)
        if r.status_code not in (200, 201):
            raise AssertionError(f"PUT {collection}/{doc_id}: {r.status_code} {r.text}")
        return str(r.json()["event_id"])

    async def _indexed(self, collection: str, doc_id: str, timeout_s: float = 30.0) -> None:
        """Wait until the document is in the index (so the next write maps after it)."""
        alias = self.settings.es.alias_for(collection)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if await self.es.indices.exists_alias(name=alias) and await self.es.exists(
                index=alias, id=doc_id
            ):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{collection}/{doc_id} was not indexed within {timeout_s}s")

    def _produce(self, records: list[OutboxRecord]) -> None:
        producer = Producer(producer_config(self.settings.kafka))
        try:
            for record in records:
                producer.produce(
                    self.settings.kafka.event_topic(record.collection),
                    key=record.kafka_key(),
                    value=record.kafka_value(),
                    headers=cast("list[tuple[str, str | bytes | None]]", record.kafka_headers()),
                )
                producer.poll(0)
            if producer.flush(30) != 0:
                raise AssertionError("direct writes left unflushed")
        finally:
            producer.close()


async def hostile_writes(
    writer: HostileWriter, *, over_bytes: int, doc_bytes: int = 200_000
) -> HostileExpectations:
    """Run the mix (module docstring); `over_bytes` is the indexer's bulk byte cap."""
    expect = HostileExpectations()
    settings = writer.settings

    # A deployment from before the `.v<N>` naming: books lives in <alias>-v1.
    books = settings.es.alias_for(LEGACY_COLLECTION)
    if not await writer.es.indices.exists(index=books):
        await writer.es.indices.create(
            index=f"{books}-v1", mappings=index_mapping(), aliases={books: {"is_write_index": True}}
        )
    for i in range(5):
        await writer._written(LEGACY_COLLECTION, f"b{i}", {"title": f"book {i}"})
    await writer._written(SQUATTER_COLLECTION, "squatter", {"title": "not a book"})
    expect.clean.add(LEGACY_COLLECTION)
    expect.parked.add(SQUATTER_COLLECTION)

    # A mapping conflict: `price` is a number once the first version is indexed.
    await writer._written(CONFLICT_COLLECTION, "c1", {"price": 1})
    await writer._indexed(CONFLICT_COLLECTION, "c1")
    await writer._written(CONFLICT_COLLECTION, "c1", {"price": 2})
    expect.dead_letters[await writer._written(CONFLICT_COLLECTION, "c1", {"price": "abc"})] += 1
    expect.dead_letters[await writer._written(CONFLICT_COLLECTION, "c2", {"price": "zzz"})] += 1
    expect.poisoned[CONFLICT_COLLECTION] = {"c1": 2, "c2": None}

    # Each limit: exactly reached through the API, one past it refused there...
    for name, body in at_the_limits(settings).items():
        await writer._written(EDGE_COLLECTION, name, body)
    expect.clean.add(EDGE_COLLECTION)
    for name, body in over_the_limits(settings).items():
        expect.refused[name] = (
            await writer._put(EDGE_COLLECTION, f"over-{name}", body)
        ).status_code

    # ... and written straight to Kafka, where only the indexer can refuse it.
    await ensure_topics(
        settings.kafka,
        {settings.kafka.event_topic(DIRECT_COLLECTION): event_topic_config(settings.kafka)},
    )
    direct = [
        OutboxRecord(
            event_id=str(uuid.uuid4()),
            collection=DIRECT_COLLECTION,
            document_id=f"over-{name}",
            version=1,
            type=EventType.CREATED,
            payload=body,
            time=datetime.now(UTC),
        )
        for name, body in over_the_limits(settings).items()
    ]
    await asyncio.to_thread(writer._produce, direct)
    expect.dead_letters.update(r.event_id for r in direct)
    expect.poisoned[DIRECT_COLLECTION] = dict.fromkeys((r.document_id for r in direct), None)

    # A batch well over the byte cap, written as fast as the API takes it.
    count = max(4, (over_bytes * 3 // 2) // doc_bytes + 1)
    filler = "x" * doc_bytes
    await asyncio.gather(
        *(
            writer._written(BULK_COLLECTION, f"big{i}", {"n": i, "text": filler})
            for i in range(count)
        )
    )
    expect.clean.add(BULK_COLLECTION)
    return expect
