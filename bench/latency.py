"""Latency as users meet it: from MongoDB's commit to Kafka, to a GET, to a search.

An open-loop load of creates through the API at a fixed rate; for every document the run
notes when each stage first had it, all on the wall clock of this one machine:

* committed     the outbox record's `time`: MongoDB's own clock inside the transaction;
* change_stream a bare change stream of the outbox (this process) saw the insert;
* kafka         the Kafka record's timestamp (the relay's producer stamps it);
* kafka_visible a read_committed consumer saw it (the relay's transaction committed);
* gettable      a realtime GET by id through the alias found it (Elasticsearch `mget`);
* searchable    `GET /v1/collections/{c}/search` (the public API) returned it.

Besides, every `new_collection_every_s` a document is written to a collection nobody
wrote before, and timed from its commit until the search API finds it.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pymongo
from confluent_kafka import Consumer, TopicPartition
from elasticsearch import AsyncElasticsearch

from bench.stats import percentiles
from infra.kafka import admin_client, consumer_config
from infra.settings import Settings

POLL_GET_S = 0.02
POLL_SEARCH_S = 0.05
DRAIN_TIMEOUT_S = 60.0
STAGES = ("committed", "change_stream", "kafka", "kafka_visible", "gettable", "searchable")


@dataclass
class Trace:
    """When each stage first had one document (epoch seconds)."""

    n: int = 0
    committed: float | None = None
    change_stream: float | None = None
    kafka: float | None = None
    kafka_visible: float | None = None
    gettable: float | None = None
    searchable: float | None = None


def _epoch(value: Any) -> float | None:
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def deltas_ms(traces: list[Trace], start: str, end: str) -> list[float]:
    """`end - start` in ms for every trace that has both."""
    out = []
    for trace in traces:
        a, b = getattr(trace, start), getattr(trace, end)
        if a is not None and b is not None:
            out.append((b - a) * 1000)
    return out


@dataclass
class LatencyResult:
    traces: list[Trace]
    new_collection_ms: list[float] = field(default_factory=list)
    writes_failed: int = 0
    # The longest search poll (all its pages): a searchable time is late by at most this.
    search_poll_max_ms: float = 0.0

    def latency_ms(self) -> dict[str, dict[str, float]]:
        return {
            "commit_to_kafka": percentiles(deltas_ms(self.traces, "committed", "kafka")),
            "commit_to_kafka_visible": percentiles(
                deltas_ms(self.traces, "committed", "kafka_visible")
            ),
            "commit_to_gettable": percentiles(deltas_ms(self.traces, "committed", "gettable")),
            "commit_to_searchable": percentiles(deltas_ms(self.traces, "committed", "searchable")),
            "new_collection_to_searchable": percentiles(self.new_collection_ms),
        }

    def write_csv(self, path: Path) -> None:
        """Every trace, one row each (epoch seconds), to see where a slow one spent its time."""
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["n", *STAGES])
            for t in self.traces:
                out.writerow([t.n, *(getattr(t, stage) for stage in STAGES)])

    def shares_ms(self) -> dict[str, dict[str, float]]:
        """Each hop on its own: where the time between commit and searchable goes."""
        hops = list(itertools.pairwise(STAGES))
        return {f"{a}_to_{b}": percentiles(deltas_ms(self.traces, a, b)) for a, b in hops}


class KafkaTimestamps:
    """A read_committed consumer thread noting each key's record timestamp and arrival."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        # key -> (record timestamp, arrival), the first copy of each key only.
        self.seen: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._assigned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-timestamps", daemon=True)

    def __enter__(self) -> KafkaTimestamps:
        self._thread.start()
        if not self._assigned.wait(30):
            raise TimeoutError("the Kafka watcher was never assigned")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        admin = admin_client(self._settings.kafka)
        partitions = admin.list_topics(topic=self._topic, timeout=10).topics[self._topic]
        consumer = Consumer(
            consumer_config(self._settings.kafka, f"bench-latency-{uuid.uuid4().hex[:8]}")
        )
        consumer.assign([TopicPartition(self._topic, p, -1) for p in partitions.partitions])
        # The assignment takes effect on the first consume: only then is "the end" fixed.
        consumer.consume(num_messages=1, timeout=0.5)
        self._assigned.set()
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=1000, timeout=0.01):
                    now = time.time()
                    key = message.key()
                    if message.error() is not None or key is None:
                        continue
                    self.seen.setdefault(key.decode(), (message.timestamp()[1] / 1000, now))
        finally:
            consumer.close()


class OutboxWatcher:
    """A bare change stream of the outbox on a thread of its own (the synchronous driver),
    so the probes' work in the event loop never delays when an insert is seen: each
    record's commit time (its `time`, MongoDB's clock) and when the stream had it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # document id or collection -> (committed, seen)
        self.seen: dict[str, tuple[float | None, float]] = {}
        self.by_collection: dict[str, tuple[float | None, float]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-watcher", daemon=True)

    def __enter__(self) -> OutboxWatcher:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the outbox change stream did not open")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        mongo = self._settings.mongo
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            mongo.uri.get_secret_value(), tz_aware=True, appname="bench-latency"
        )
        outbox = client[mongo.database][mongo.outbox_collection]
        try:
            with outbox.watch(
                [{"$match": {"operationType": "insert"}}], max_await_time_ms=10
            ) as stream:
                self._ready.set()
                while not self._stop.is_set():
                    change = stream.try_next()
                    if change is None:
                        continue
                    now = time.time()
                    record = change["fullDocument"]
                    seen = (_epoch(record.get("time")), now)
                    self.seen.setdefault(str(record.get("document_id")), seen)
                    self.by_collection.setdefault(str(record.get("collection")), seen)
        finally:
            client.close()


async def measure(
    settings: Settings,
    http: httpx.AsyncClient,
    es: AsyncElasticsearch,
    *,
    collection: str,
    body: Callable[[int], dict[str, Any]],
    rate_per_s: float,
    seconds: float,
    new_collection_every_s: float,
    first_n: int = 10_000_000,
) -> LatencyResult:
    """Run the open-loop load and the probes; every trace is complete or given up on."""
    alias = settings.es.alias_for(collection)
    topic = settings.kafka.event_topic(collection)
    fresh: dict[str, Trace] = {}
    by_id: dict[str, Trace] = {}
    failed = 0
    writing = True
    poll_ms = [0.0]

    async def write(i: int) -> None:
        nonlocal failed
        n = first_n + i
        response = await http.post(f"/v1/collections/{collection}/documents", json=body(n))
        if response.status_code != 201:
            failed += 1
            return
        document_id = str(response.json()["id"])
        by_id[document_id] = Trace(n=n)

    async def poll_get() -> None:
        while writing or any(t.gettable is None for t in by_id.values()):
            ids = [i for i, t in by_id.items() if t.gettable is None]
            if ids:
                response = await es.mget(index=alias, ids=ids, source=False)
                now = time.time()
                for doc in response["docs"]:
                    if doc.get("found"):
                        by_id[doc["_id"]].gettable = now
            await asyncio.sleep(POLL_GET_S)

    async def poll_search() -> None:
        while writing or any(t.searchable is None for t in by_id.values()):
            waiting = [t.n for t in by_id.values() if t.searchable is None]
            polled = time.monotonic()
            if waiting:
                lowest = min(waiting)
                params: dict[str, Any] = {"sort": "-n", "size": 100}
                while True:
                    response = await http.get(f"/v1/collections/{collection}/search", params=params)
                    now = time.time()
                    if response.status_code != 200:
                        break
                    page = response.json()
                    hits = page.get("hits", [])
                    for hit in hits:
                        trace = by_id.get(str(hit.get("id")))
                        if trace is not None and trace.searchable is None:
                            trace.searchable = now
                    last_n = hits[-1].get("document", {}).get("n") if hits else None
                    if not page.get("next") or last_n is None or last_n <= lowest:
                        break
                    params = {"sort": "-n", "size": 100, "search_after": page["next"]}
            poll_ms[0] = max(poll_ms[0], (time.monotonic() - polled) * 1000)
            await asyncio.sleep(POLL_SEARCH_S)

    async def new_collections() -> list[float]:
        found: list[float] = []
        k = 0
        while writing:
            name = f"fresh-{uuid.uuid4().hex[:8]}"
            fresh[name] = Trace()
            k += 1
            response = await http.post(f"/v1/collections/{name}/documents", json=body(k))
            if response.status_code == 201:
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while time.monotonic() < deadline:
                    answer = await http.get(f"/v1/collections/{name}/search", params={"size": 1})
                    if answer.status_code == 200 and answer.json().get("hits"):
                        fresh[name].searchable = time.time()
                        break
                    await asyncio.sleep(POLL_SEARCH_S)
            await asyncio.sleep(new_collection_every_s)
        for name, trace in fresh.items():
            committed = outbox.by_collection.get(name, (None, 0.0))[0]
            if committed is not None and trace.searchable is not None:
                found.append((trace.searchable - committed) * 1000)
        return found

    with OutboxWatcher(settings) as outbox, KafkaTimestamps(settings, topic) as kafka:
        getter = asyncio.create_task(poll_get())
        searcher = asyncio.create_task(poll_search())
        newcomer = asyncio.create_task(new_collections())
        writers = []
        started = time.monotonic()
        for i in range(int(rate_per_s * seconds)):
            delay = started + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writers.append(asyncio.create_task(write(i)))
        await asyncio.gather(*writers)
        writing = False
        new_ms = await asyncio.wait_for(newcomer, DRAIN_TIMEOUT_S * 2)
        await asyncio.wait_for(asyncio.gather(getter, searcher), DRAIN_TIMEOUT_S)
        # The Kafka watcher may trail the last GET by a few ms.
        deadline = time.monotonic() + 10
        while any(i not in kafka.seen for i in by_id) and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread fills it
            await asyncio.sleep(0.05)
    for document_id, trace in by_id.items():
        if document_id in kafka.seen:
            trace.kafka, trace.kafka_visible = kafka.seen[document_id]
        if document_id in outbox.seen:
            trace.committed, trace.change_stream = outbox.seen[document_id]
    return LatencyResult(list(by_id.values()), new_ms, failed, round(poll_ms[0], 1))
