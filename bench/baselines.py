"""Each stage's raw baseline: the same work done directly with the driver, nothing else.

* writes: the API's transaction (read the document, insert it, insert its outbox record;
  snapshot read concern, majority write concern) with `AsyncMongoClient`;
* relay: a bare change-stream read of the same outbox backlog, and a bare transactional
  producer sending the same messages in the same batch sizes;
* indexer: `helpers.async_bulk` of the same documents with the indexer's `_source` layout and
  external versions, in chunks of the indexer's batch size.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from bson.timestamp import Timestamp
from confluent_kafka import Producer
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from bench.stats import Rate, rate_after_first
from infra.envelope import EventType, KafkaMessage, OutboxRecord, new_event_id, utc_now
from infra.index_layout import index_mapping, source_for
from infra.kafka import produce, producer_config
from infra.mongo import MongoClient
from infra.settings import KafkaSettings, Settings


async def run_concurrently(n: int, concurrency: int, one: Callable[[int], Any]) -> Rate:
    """Call `await one(i)` for i in range(n) from `concurrency` workers; time the whole."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Rate(n, time.perf_counter() - started)


async def operation_time(client: MongoClient) -> Timestamp:
    """The cluster's current operation time (where a change stream of what follows starts)."""
    async with client.start_session() as session:
        await client.admin.command("ping", session=session)
        op_time = session.operation_time
    assert op_time is not None
    return op_time


async def raw_writes(
    client: MongoClient,
    settings: Settings,
    *,
    collection: str,
    n: int,
    concurrency: int,
    body: Callable[[int], dict[str, Any]],
) -> Rate:
    """The API's create transaction (document + outbox record) straight through the driver."""
    db = client[settings.mongo.database]
    documents = db[collection]
    outbox = db[settings.mongo.outbox_collection]

    async def one(i: int) -> None:
        document_id = f"raw-{uuid.uuid4().hex}"
        document = body(i)

        async def txn(session: AsyncClientSession) -> None:
            await documents.find_one({"_id": document_id}, session=session)
            now = utc_now()
            await documents.insert_one(
                {
                    "_id": document_id,
                    "version": 1,
                    "document": document,
                    "deleted": False,
                    "updated_at": now,
                },
                session=session,
            )
            record = OutboxRecord(
                event_id=new_event_id(),
                collection=collection,
                document_id=document_id,
                version=1,
                type=EventType.CREATED,
                payload={"id": document_id, **document},
                time=now,
            )
            await outbox.insert_one(record.to_mongo(), session=session)

        async with client.start_session() as session:
            await session.with_transaction(
                txn, read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority")
            )

    return await run_concurrently(n, concurrency, one)


async def raw_change_stream_read(
    client: MongoClient, settings: Settings, *, start_at: Timestamp, n: int
) -> Rate:
    """Read `n` outbox inserts from `start_at`; timed from the first event to the n-th,
    in the relay's batch size."""
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    seen = 0
    first: float | None = None
    async with await outbox.watch(
        [{"$match": {"operationType": "insert"}}],
        start_at_operation_time=start_at,
        batch_size=settings.relay.batch_max_events,
    ) as stream:
        async for _ in stream:
            if first is None:
                first = time.perf_counter()
            seen += 1
            if seen >= n:
                break
    assert first is not None
    return rate_after_first(seen, 1, first, time.perf_counter())


def bare_transactional_produce(
    kafka: KafkaSettings, messages: list[KafkaMessage], batch: int
) -> Rate:
    """Blocking: `messages` in transactions of `batch`, with the relay's producer settings
    and nothing else (no change stream, no checkpoint, no delivery callbacks)."""
    producer = Producer(
        producer_config(
            kafka,
            **{
                "transactional.id": f"{kafka.namespace}.bare-producer",
                "transaction.timeout.ms": 60000,
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "batch.size": 1024 * 1024,
                "queue.buffering.max.messages": 1_000_000,
            },
        )
    )
    producer.init_transactions(30)
    started = time.perf_counter()
    for start in range(0, len(messages), batch):
        producer.begin_transaction()
        for i, message in enumerate(messages[start : start + batch], start=1):
            produce(producer, message)
            if i % 256 == 0:
                producer.poll(0)
        producer.commit_transaction(30)
    elapsed = time.perf_counter() - started
    producer.flush(10)
    return Rate(len(messages), elapsed)


async def raw_bulk(
    es: AsyncElasticsearch, settings: Settings, *, records: list[OutboxRecord], index: str
) -> Rate:
    """Bulk-index `records` as the indexer would (same `_source`, external versions)."""
    if not await es.indices.exists(index=index):
        await es.indices.create(index=index, mappings=index_mapping())
    indexed_at = utc_now()
    actions = [
        {
            "_op_type": "index",
            "_index": index,
            "_id": r.document_id,
            "version": r.version,
            "version_type": "external",
            "_source": source_for(r, indexed_at=indexed_at),
        }
        for r in records
    ]
    started = time.perf_counter()
    await async_bulk(
        es, actions, chunk_size=settings.indexer.batch_max_events, raise_on_error=False
    )
    await es.indices.refresh(index=index)
    return Rate(len(records), time.perf_counter() - started)
