"""`make bench`: each stage against its own raw baseline, side by side, on one stack.

Absolute numbers on a shared 2-core machine are noise; the ratios are the result. Every
stage is measured over a window of at least `--window-seconds` of steady work, `--repetitions`
times, pipeline and baseline interleaved (A B A B …) so that drift hits both:

* `api_ratio`     = API writes/s (authenticated, through FastAPI) / the same transaction done
                    directly with the driver at the same concurrency (goal >= 0.7);
* `relay_ratio`   = relay catch-up rate over an outbox backlog / a raw change-stream read of
                    the same backlog (goal >= 0.8); besides, the relay against a bare
                    transactional producer sending the same messages in the same batch sizes
                    (`relay_vs_producer_ratio`) and against the slower of the two baselines
                    (`relay_vs_slower_ratio`);
* `indexer_ratio` = indexer catch-up rate over a topic backlog / raw bulk indexing of the same
                    documents (goal >= 0.8);

plus latency as users meet it at half the sustainable write rate (`bench.latency`), and the
peak RSS of each service. The relay and the indexer are measured on stages of their own
(their own MongoDB database, Kafka namespace and index prefix) seeded straight through the
drivers. Writes `bench/<YYYY-MM-DD>.json` (every sample) and prints a table; exits non-zero
when a ratio's repetitions spread more than 1.5 (max / min).

    python -m bench.run [--repetitions 3] [--window-seconds 6] [--concurrency 8]
                        [--latency-seconds 15] [--relay-batch N] [--scale]
                        [--out DIR] [--data-dir DIR [--profile relay ...]]
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import platform
import random
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from confluent_kafka import Consumer, Producer, TopicPartition
from elasticsearch import AsyncElasticsearch, NotFoundError
from rich.console import Console
from rich.table import Table

from bench import latency
from bench.baselines import (
    bare_transactional_produce,
    operation_time,
    raw_bulk,
    raw_change_stream_read,
    raw_writes,
    run_concurrently,
)
from bench.load import api_client, document_body
from bench.pipeline import Pipeline, ServiceProcess
from bench.read_your_writes import measure_read_your_writes
from bench.stats import (
    Rate,
    backlog_for,
    interleaved,
    percentiles,
    rate_after_first,
    summary,
    too_spread,
)
from infra.devstack import free_port
from infra.elastic import elastic_client
from infra.envelope import EnvelopeEncoder, EventType, OutboxRecord, new_event_id, utc_now
from infra.kafka import admin_client, consumer_config, ensure_topics, event_topic_config, produce
from infra.kafka import producer_config as kafka_producer_config
from infra.mongo import MongoClient, mongo_client
from infra.settings import Settings

COLLECTION = "bench"
RYW_COLLECTION = "bench-ryw"  # read-your-writes rounds, apart from the latency traces
RYW_ROUNDS = 50
GOALS = {"api_ratio": 0.7, "relay_ratio": 0.8, "indexer_ratio": 0.8}
STAGE_TIMEOUT_S = 300.0
INSERT_CHUNK = 2000
OPLOG_ENTRIES = 300_000
RELAY_BACKLOG_MAX = 60_000
STAGES = ("api", "relay", "indexer", "latency")


@dataclass
class Results:
    """Everything `bench/<date>.json` holds."""

    date: str
    machine: dict[str, Any]
    config: dict[str, Any]
    rates: dict[str, list[float]] = field(default_factory=dict)
    windows_s: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    # Per side of a stage and repetition: CPU cores each process used over the side's whole
    # duration (start-up included), to see which one the machine's two cores went to.
    cpu_cores: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # Raw ratio samples, summarised into `ratios` at the end.
    _ratio_samples: dict[str, list[float]] = field(default_factory=dict)

    def sample(self, name: str, rate: Rate) -> None:
        self.rates.setdefault(name, []).append(round(rate.per_s, 1))
        self.windows_s.setdefault(name, []).append(round(rate.seconds, 2))

    def ratio(self, name: str, value: float) -> None:
        self._ratio_samples.setdefault(name, []).append(value)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_ratio_samples")
        return out


def machine_facts() -> dict[str, Any]:
    versions = {}
    for package in ("pymongo", "confluent-kafka", "elasticsearch", "secantusdb", "noida-db"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "packages": versions,
    }


def document_body_for(i: int, pad_bytes: int = 0) -> dict[str, Any]:
    body = document_body(random.Random(i), i)  # seeded per document: identical bodies
    if pad_bytes:
        body["blob"] = "x" * pad_bytes
    return body


def bench_records(collection: str, n: int, *, first: int, pad_bytes: int = 0) -> list[OutboxRecord]:
    """`n` valid create events of fresh documents, as the API would have written them."""
    now = utc_now()
    records = []
    for i in range(first, first + n):
        document_id = f"doc-{i:08d}"
        records.append(
            OutboxRecord(
                event_id=new_event_id(),
                collection=collection,
                document_id=document_id,
                version=1,
                type=EventType.CREATED,
                payload={"id": document_id, **document_body_for(i, pad_bytes)},
                time=now,
            )
        )
    return records


def stage_settings(base: Settings, namespace: str) -> Settings:
    """A stage of its own: MongoDB database, Kafka namespace, index prefix, group, ports."""
    return base.model_copy(
        update={
            "mongo": base.mongo.model_copy(update={"database": namespace}),
            "kafka": base.kafka.model_copy(update={"namespace": namespace}),
            "es": base.es.model_copy(update={"index_prefix": f"{namespace}-"}),
            "relay": base.relay.model_copy(update={"metrics_port": free_port()}),
            "indexer": base.indexer.model_copy(
                update={
                    "metrics_port": free_port(),
                    "group_id": f"{namespace}-indexer",
                    "instance_id": f"{namespace}-indexer",
                }
            ),
        }
    )


# --- Kafka and Elasticsearch observers (blocking, run in threads) -------------------------


def partitions_of(settings: Settings, topic: str) -> list[TopicPartition]:
    admin = admin_client(settings.kafka)
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while topic not in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} never appeared")
        time.sleep(0.05)
    meta = admin.list_topics(topic=topic, timeout=10).topics[topic]
    return [TopicPartition(topic, p) for p in sorted(meta.partitions)]


def high_watermarks(settings: Settings, topic: str) -> list[TopicPartition]:
    consumer = Consumer(consumer_config(settings.kafka, f"bench-{uuid.uuid4().hex[:8]}"))
    try:
        return [
            TopicPartition(tp.topic, tp.partition, consumer.get_watermark_offsets(tp, 10)[1])
            for tp in partitions_of(settings, topic)
        ]
    finally:
        consumer.close()


def count_events(
    settings: Settings,
    start: list[TopicPartition],
    expected: int,
    *,
    on_first: Callable[[], object] | None = None,
) -> tuple[int, float, float]:
    """Read_committed events from `start` until `expected`: (seen at the first look, its
    time, the time of the `expected`-th)."""
    consumer = Consumer(consumer_config(settings.kafka, f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.assign(start)
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    seen, at_first, first = 0, 0, None
    try:
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the relay published {seen} of {expected} events")
            for message in consumer.consume(num_messages=10000, timeout=0.05):
                if message.error() is None:
                    seen += 1
            if seen and first is None:
                first, at_first = time.perf_counter(), seen
                if on_first is not None:
                    on_first()
    finally:
        consumer.close()
    assert first is not None
    return at_first, first, time.perf_counter()


def group_catch_up(settings: Settings, topic: str) -> Rate:
    """Watch the indexer group's committed offsets until they reach the topic's end.

    The indexer commits only after Elasticsearch acknowledged, so this is "indexed" without
    polling Elasticsearch. The window runs from the first commit seen to the last; what the
    first commit covered is not counted.
    """
    tps = partitions_of(settings, topic)
    watcher = Consumer(consumer_config(settings.kafka, settings.indexer.group_id))
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    try:
        ends = [watcher.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]

        def committed() -> int:
            return sum(max(tp.offset, 0) for tp in watcher.committed(tps, timeout=10))

        before = committed()
        first: float | None = None
        at_first = before
        while True:
            total = committed()
            now = time.perf_counter()
            if total != before and first is None:
                first, at_first = now, total
            if total >= sum(ends):
                assert first is not None
                return rate_after_first(total, at_first, first, now)
            if time.monotonic() > deadline:
                raise TimeoutError(f"indexer committed {total} of {sum(ends)}")
            time.sleep(0.02)
    finally:
        watcher.close()


def produce_plain(settings: Settings, records: list[OutboxRecord], topic: str) -> None:
    """The records as the relay would publish them, without transactions (no markers)."""
    producer = Producer(kafka_producer_config(settings.kafka, **{"linger.ms": 20}))
    for i, record in enumerate(records, start=1):
        produce(producer, record.to_kafka(topic))
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("seeding the indexer's topic did not finish")


async def es_count(es: AsyncElasticsearch, index: str) -> int:
    try:
        await es.indices.refresh(index=index)
        response = await es.count(index=index)
    except NotFoundError:
        return 0
    return int(response["count"])


async def insert_outbox(
    client: MongoClient, settings: Settings, records: list[OutboxRecord]
) -> None:
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    for start in range(0, len(records), INSERT_CHUNK):
        chunk = records[start : start + INSERT_CHUNK]
        await outbox.insert_many([r.to_mongo() for r in chunk], ordered=False)


# --- the stages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures (the command's options)."""

    repetitions: int = 3
    window_s: float = 6.0
    concurrency: int = 8
    latency_seconds: float = 15.0
    relay_batch: int | None = None
    scale: bool = False
    profile: tuple[str, ...] = ()
    stages: tuple[str, ...] = STAGES


async def api_stage(
    http: httpx.AsyncClient,
    client: MongoClient,
    settings: Settings,
    cfg: BenchConfig,
    results: Results,
    console: Console,
) -> float:
    """API writes vs the driver's transaction; returns the API's median rate."""
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        response = await http.post(
            f"/v1/collections/{COLLECTION}/documents", json=document_body_for(i)
        )
        if response.status_code != 201:
            failures += 1

    warm = await run_concurrently(200, cfg.concurrency, one)
    n = backlog_for(warm.per_s, cfg.window_s, floor=500, ceiling=50_000)
    console.log(f"api: {n} writes per side, {cfg.repetitions}x interleaved, at {cfg.concurrency}")
    api_rates = []
    for side in interleaved(cfg.repetitions, ("pipeline", "baseline")):
        if side == "pipeline":
            rate = await run_concurrently(n, cfg.concurrency, one)
            results.sample("api_writes_per_s", rate)
            api_rates.append(rate.per_s)
        else:
            rate = await raw_writes(
                client,
                settings,
                collection=COLLECTION,
                n=n,
                concurrency=cfg.concurrency,
                body=document_body_for,
            )
            results.sample("raw_writes_per_s", rate)
    if failures:
        raise RuntimeError(f"{failures} API writes failed")
    for api, raw in zip(
        results.rates["api_writes_per_s"], results.rates["raw_writes_per_s"], strict=True
    ):
        results.ratio("api_ratio", api / raw)
    return sorted(api_rates)[len(api_rates) // 2]


async def relay_stage(
    pipeline: Pipeline, cfg: BenchConfig, results: Results, console: Console
) -> None:
    """Relay catch-up vs a raw change-stream read and vs a bare transactional producer."""
    base = pipeline.settings
    settings = stage_settings(base, "benchrelay")
    # The harness's 3 s lease is for fault runs (fast takeover). SecantusDB answers nothing
    # else while it counts the relay's backlog (it fetches every matching record), which
    # over 100k records takes longer than that lease: a catch-up would abort transaction
    # after transaction with "lease lost before commit". 30 s, renewed every 10 s.
    settings = settings.model_copy(
        update={"relay": settings.relay.model_copy(update={"lease_ttl_seconds": 30.0})}
    )
    if cfg.relay_batch is not None:
        settings = settings.model_copy(
            update={
                "relay": settings.relay.model_copy(update={"batch_max_events": cfg.relay_batch})
            }
        )
    producer_kafka = settings.kafka.model_copy(update={"namespace": "benchproducer"})
    topic = settings.kafka.event_topic(COLLECTION)
    client = mongo_client(settings.mongo, app_name="bench-relay")
    relay = pipeline.add_service("relay-stage", "relay", settings=settings)
    if "relay" in pipeline.profile:
        relay.profile_to = pipeline.data_dir / "relay.profile.txt"
    try:
        # Warm-up: two records, one after the other, so the relay has an ordinary streaming
        # checkpoint and resumes below the way it does after any downtime.
        relay.start()
        await insert_outbox(client, settings, bench_records(COLLECTION, 1, first=0))
        await asyncio.to_thread(_drain, settings, topic, 1)
        await insert_outbox(client, settings, bench_records(COLLECTION, 1, first=1))
        await asyncio.to_thread(_drain, settings, topic, 2)
        await asyncio.to_thread(relay.stop)
        await ensure_topics(
            producer_kafka,
            {producer_kafka.event_topic(COLLECTION): event_topic_config(producer_kafka)},
        )
        encoder = EnvelopeEncoder(producer_kafka.event_topic)

        # Size the backlog from a first look at the fastest side (the raw read).
        probe = bench_records(COLLECTION, 10_000, first=2)
        at = await operation_time(client)
        await insert_outbox(client, settings, probe)
        raw_probe = await raw_change_stream_read(client, settings, start_at=at, n=len(probe))
        relay.start()
        await asyncio.to_thread(_drain, settings, topic, len(probe) + 2)
        await asyncio.to_thread(relay.stop)
        # SecantusDB inserts ~1-3k records/s here and its change streams slow down as the
        # oplog grows: 60k, so three repetitions fit the oplog and a few minutes.
        n = backlog_for(raw_probe.per_s, cfg.window_s, floor=20_000, ceiling=RELAY_BACKLOG_MAX)
        console.log(
            f"relay: backlogs of {n} outbox records (raw read ~{raw_probe.per_s:.0f}/s), "
            f"{cfg.repetitions}x interleaved, batch {settings.relay.batch_max_events}"
        )
        first = 2 + len(probe)
        for rep in range(cfg.repetitions):
            records = bench_records(COLLECTION, n, first=first)
            first += n
            at = await operation_time(client)
            await insert_outbox(client, settings, records)
            messages = [encoder.encode(r.to_mongo()) for r in records]
            order = ["relay", "raw", "producer"] if rep % 2 == 0 else ["raw", "producer", "relay"]
            rates: dict[str, Rate] = {}
            for side in order:
                cpu_before, wall_before = cpu_seconds(pipeline, relay), time.perf_counter()
                cpu_end: dict[str, float] | None = None
                wall_end: float | None = None
                if side == "raw":
                    rates[side] = await raw_change_stream_read(client, settings, start_at=at, n=n)
                elif side == "producer":
                    rates[side] = await asyncio.to_thread(
                        bare_transactional_produce,
                        producer_kafka,
                        messages,
                        settings.relay.batch_max_events,
                    )
                else:
                    hw = await asyncio.to_thread(high_watermarks, settings, topic)
                    relay.start()
                    at_first, t0, t1 = await asyncio.to_thread(count_events, settings, hw, n)
                    rates[side] = rate_after_first(n, at_first, t0, t1)
                    await _keep_metrics(pipeline, settings.relay.metrics_port, f"relay-{rep}")
                    cpu_end = cpu_seconds(pipeline, relay)  # before it exits
                    wall_end = time.perf_counter()
                    await asyncio.to_thread(relay.stop)
                cpu_after = cpu_end or cpu_seconds(pipeline, relay)
                wall = (wall_end or time.perf_counter()) - wall_before
                results.cpu_cores.setdefault(f"relay_stage_{side}", []).append(
                    {
                        name: round((cpu_after.get(name, 0.0) - used) / wall, 2)
                        for name, used in cpu_before.items()
                    }
                )
            results.sample("relay_events_per_s", rates["relay"])
            results.sample("raw_change_stream_events_per_s", rates["raw"])
            results.sample("bare_producer_events_per_s", rates["producer"])
            slower = min(rates["raw"].per_s, rates["producer"].per_s)
            results.ratio("relay_ratio", rates["relay"].per_s / rates["raw"].per_s)
            results.ratio("relay_vs_producer_ratio", rates["relay"].per_s / rates["producer"].per_s)
            results.ratio("relay_vs_slower_ratio", rates["relay"].per_s / slower)
            console.log(
                f"relay rep {rep + 1}: relay {rates['relay'].per_s:.0f}/s, raw read "
                f"{rates['raw'].per_s:.0f}/s, bare producer {rates['producer'].per_s:.0f}/s"
            )
    finally:
        await asyncio.to_thread(relay.stop)
        # The stage's records would keep SecantusDB busy for the stages after it.
        await client.drop_database(settings.mongo.database)
        await client.close()


def cpu_seconds(pipeline: Pipeline, *services: ServiceProcess) -> dict[str, float]:
    """CPU seconds (user + system) so far of the servers, `services` and this process; a
    service not running counts what it used before it stopped as nothing."""
    pids: dict[str, int | None] = {
        "mongodb": _pid(pipeline.stack.mongo.process),
        "kafka_es": _pid(pipeline.stack.kafka_es.process),
        "bench": os.getpid(),
    }
    pids |= {service.name: service.pid if service.running else None for service in services}
    out: dict[str, float] = {}
    for name, pid in pids.items():
        if pid is None:
            out[name] = 0.0
            continue
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            out[name] = 0.0
            continue
        out[name] = float(times.user + times.system + times.children_user + times.children_system)
    return out


def _pid(process: Any) -> int | None:
    return None if process is None else int(process.pid)


async def _keep_metrics(pipeline: Pipeline, port: int, name: str) -> None:
    """The service's /metrics (commit durations, batch sizes) next to its log."""
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
        except httpx.HTTPError:
            return
    (pipeline.data_dir / f"{name}.metrics.txt").write_text(response.text)


def _drain(settings: Settings, topic: str, total: int) -> None:
    start = [TopicPartition(tp.topic, tp.partition, 0) for tp in partitions_of(settings, topic)]
    count_events(settings, start, total)


async def indexer_stage(
    pipeline: Pipeline,
    es: AsyncElasticsearch,
    cfg: BenchConfig,
    results: Results,
    console: Console,
) -> None:
    """Indexer catch-up over a seeded topic vs raw bulk of the same documents."""
    settings = stage_settings(pipeline.settings, "benchindex")
    topic = settings.kafka.event_topic(COLLECTION)
    alias = settings.es.alias_for(COLLECTION)
    raw_index = f"{settings.es.index_prefix}raw-bulk"
    await ensure_topics(settings.kafka, {topic: event_topic_config(settings.kafka)})
    indexer = pipeline.add_service("indexer-stage", "indexer", settings=settings)
    if "indexer" in pipeline.profile:
        indexer.profile_to = pipeline.data_dir / "indexer.profile.txt"
    try:
        probe = bench_records(COLLECTION, 5000, first=0)
        raw_probe = await raw_bulk(es, settings, records=probe, index=raw_index)
        await asyncio.to_thread(produce_plain, settings, probe, topic)
        await _index_backlog(pipeline, indexer, settings, topic)
        n = backlog_for(raw_probe.per_s, cfg.window_s, floor=10_000, ceiling=200_000)
        console.log(
            f"indexer: backlogs of {n} events (raw bulk ~{raw_probe.per_s:.0f}/s), "
            f"{cfg.repetitions}x interleaved"
        )
        first = len(probe)
        for rep in range(cfg.repetitions):
            records = bench_records(COLLECTION, n, first=first)
            first += n
            await asyncio.to_thread(produce_plain, settings, records, topic)
            order = ["indexer", "raw"] if rep % 2 == 0 else ["raw", "indexer"]
            rates: dict[str, Rate] = {}
            for side in order:
                if side == "raw":
                    rates[side] = await raw_bulk(es, settings, records=records, index=raw_index)
                else:
                    rates[side] = await _index_backlog(pipeline, indexer, settings, topic)
            results.sample("indexer_docs_per_s", rates["indexer"])
            results.sample("raw_bulk_docs_per_s", rates["raw"])
            results.ratio("indexer_ratio", rates["indexer"].per_s / rates["raw"].per_s)
            console.log(
                f"indexer rep {rep + 1}: indexer {rates['indexer'].per_s:.0f}/s, "
                f"raw bulk {rates['raw'].per_s:.0f}/s"
            )
        indexed = await es_count(es, alias)
        if indexed != first:
            raise RuntimeError(f"indexer caught up but {indexed} of {first} documents indexed")
    finally:
        await asyncio.to_thread(indexer.stop)


async def _index_backlog(
    pipeline: Pipeline, indexer: ServiceProcess, settings: Settings, topic: str
) -> Rate:
    indexer.start()
    await pipeline.wait_ready(indexer)
    try:
        return await asyncio.to_thread(group_catch_up, settings, topic)
    finally:
        await asyncio.to_thread(indexer.stop)


async def latency_stage(
    pipeline: Pipeline,
    http: httpx.AsyncClient,
    es: AsyncElasticsearch,
    client: MongoClient,
    cfg: BenchConfig,
    api_rate: float,
    results: Results,
    console: Console,
) -> None:
    settings = pipeline.settings
    topic = settings.kafka.event_topic(COLLECTION)
    await pipeline.start_services(["relay", "indexer"])
    # One write at least, so the topic exists even when the API stage did not run.
    response = await http.post(f"/v1/collections/{COLLECTION}/documents", json=document_body_for(0))
    response.raise_for_status()
    # Everything the API stage wrote goes through first: the load below meets an idle pipeline.
    await asyncio.to_thread(_wait_indexed, settings, topic)
    steady = max(1.0, round(api_rate / 2))
    console.log(f"latency: {steady:.0f} writes/s for {cfg.latency_seconds:.0f}s")
    outcome = await latency.measure(
        settings,
        http,
        es,
        collection=COLLECTION,
        body=document_body_for,
        rate_per_s=steady,
        seconds=cfg.latency_seconds,
        new_collection_every_s=1.0,
    )
    results.rates["steady_writes_per_s"] = [steady]
    results.config["search_poll_max_ms"] = outcome.search_poll_max_ms
    results.latency_ms = outcome.latency_ms()
    results.latency_hops_ms = outcome.shares_ms()
    outcome.write_csv(pipeline.data_dir / "latency-traces.csv")
    if outcome.writes_failed:
        results.failures.append(f"{outcome.writes_failed} latency-phase writes failed")
    # Read your writes: what `after=<token>` adds to a search right after the write.
    ryw = await measure_read_your_writes(http, RYW_COLLECTION, rounds=RYW_ROUNDS)
    results.latency_ms["search_with_token"] = percentiles(ryw.with_token_ms)
    results.latency_ms["search_without_token"] = percentiles(ryw.plain_ms)
    results.latency_ms["token_extra"] = percentiles(ryw.extra_ms)
    if ryw.missed or ryw.failed:
        results.failures.append(
            f"read your writes: {ryw.missed} token searches missed the write, {ryw.failed} failed"
        )


def _wait_indexed(settings: Settings, topic: str) -> None:
    """Until the indexer group's commits reach the topic's end (within commit markers)."""
    tps = partitions_of(settings, topic)
    watcher = Consumer(consumer_config(settings.kafka, settings.indexer.group_id))
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ends = [watcher.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
            done = [max(tp.offset, 0) for tp in watcher.committed(tps, timeout=10)]
            # A transaction's commit marker takes an offset: "caught up" is within one.
            if all(c >= e - 1 for c, e in zip(done, ends, strict=True)):
                time.sleep(1.0)
                return
            time.sleep(0.2)
        raise TimeoutError("the pipeline did not catch up with the API stage's writes")
    finally:
        watcher.close()


# --- the run ---------------------------------------------------------------------------------


async def run_bench(cfg: BenchConfig, data_dir: Path, console: Console) -> Results:
    # SecantusDB keeps 100k oplog entries by default: a stopped relay's resume token must
    # outlive its stage's backlog plus what the other stages write, or it would measure a
    # recovery instead. Not much more: SecantusDB's change streams slow down as its oplog
    # grows (a relay read 113k records at 4.7k/s over a 140k-entry oplog, then crawled at a
    # few hundred per second over a 250k one).
    pipeline = Pipeline.create(data_dir, oplog_max_entries=OPLOG_ENTRIES)
    pipeline.profile = set(cfg.profile)
    # The latency probe searches many times a second from one address; the relay's lease is
    # the production default's order (the harness's 3 s one is for fault runs, and a
    # SecantusDB busy with the stages' data answers a renewal in seconds).
    pipeline.settings = pipeline.settings.model_copy(
        update={
            "api": pipeline.settings.api.model_copy(update={"search_rate_per_second": 10_000}),
            "relay": pipeline.settings.relay.model_copy(update={"lease_ttl_seconds": 30.0}),
        }
    )
    settings = pipeline.settings
    results = Results(
        date=datetime.now(UTC).date().isoformat(),
        machine=machine_facts(),
        config={
            "repetitions": cfg.repetitions,
            "window_s": cfg.window_s,
            "concurrency": cfg.concurrency,
            "latency_seconds": cfg.latency_seconds,
            "relay_batch_max_events": cfg.relay_batch or settings.relay.batch_max_events,
            "indexer_batch_max_events": settings.indexer.batch_max_events,
            "refresh_interval_s": settings.es.refresh_interval_s,
        },
    )
    client = mongo_client(settings.mongo, app_name="bench")
    es = elastic_client(settings.es)
    try:
        await pipeline.start_servers()
        password = secrets.token_urlsafe(16)
        await pipeline.create_writer(password)
        await pipeline.start_services(["auth", "api"])
        token = await pipeline.token(password)
        async with api_client(pipeline.api_url, token, concurrency=cfg.concurrency) as http:
            api_rate = 100.0
            if "api" in cfg.stages:
                api_rate = await api_stage(http, client, settings, cfg, results, console)
            if "relay" in cfg.stages:
                await relay_stage(pipeline, cfg, results, console)
            if "indexer" in cfg.stages:
                await indexer_stage(pipeline, es, cfg, results, console)
            if "latency" in cfg.stages:
                await latency_stage(pipeline, http, es, client, cfg, api_rate, results, console)
            if cfg.scale:
                from bench.scale import run_scale  # noqa: PLC0415 - only with --scale

                for name in ("relay", "indexer"):  # the latency stage's: idle, but not free
                    if name in pipeline.services:
                        await asyncio.to_thread(pipeline.services[name].stop)
                async with api_client(pipeline.api_url, token, concurrency=32) as wide:
                    results.scale = await run_scale(pipeline, es, console, http=wide)
    finally:
        await client.close()
        await es.close()
        await pipeline.stop()
    results.peak_rss_mib = {
        name: round(rss / 2**20, 1) for name, rss in sorted(pipeline.rss.peak_bytes.items())
    }
    results.ratios = {name: summary(s) for name, s in results._ratio_samples.items()}
    for name, goal in GOALS.items():
        median = results.ratios.get(name, {}).get("median", 0.0)
        if median < goal:
            results.notes.append(f"{name} median {median} misses its goal {goal}")
    results.failures += too_spread(results._ratio_samples)
    return results


def _median(results: Results, name: str) -> float:
    samples = results.rates.get(name) or [0.0]
    return sorted(samples)[len(samples) // 2]


def print_table(results: Results, console: Console) -> None:
    table = Table(
        title=f"outbox-pipeline bench {results.date} ({results.machine['cpus']} CPUs, "
        f"load {results.machine['load_avg_1m']})"
    )
    table.add_column("stage")
    table.add_column("pipeline /s (median)", justify="right")
    table.add_column("baseline /s (median)", justify="right")
    table.add_column("ratio median [min-max] (goal)", justify="right")

    def ratio(name: str) -> str:
        r = results.ratios.get(name)
        if r is None:
            return "-"
        goal = GOALS.get(name)
        mark = "" if goal is None else ("[green]" if r["median"] >= goal else "[red]")
        close = "" if goal is None else "[/]"
        aim = "" if goal is None else f" (≥ {goal})"
        return f"{mark}{r['median']:.2f}{close} [{r['min']:.2f}-{r['max']:.2f}]{aim}"

    rows = [
        ("API writes vs driver txn", "api_writes_per_s", "raw_writes_per_s", "api_ratio"),
        (
            "relay vs raw change stream",
            "relay_events_per_s",
            "raw_change_stream_events_per_s",
            "relay_ratio",
        ),
        (
            "relay vs bare txn producer",
            "relay_events_per_s",
            "bare_producer_events_per_s",
            "relay_vs_producer_ratio",
        ),
        ("relay vs the slower baseline", "relay_events_per_s", "", "relay_vs_slower_ratio"),
        ("indexer vs raw bulk", "indexer_docs_per_s", "raw_bulk_docs_per_s", "indexer_ratio"),
    ]
    for label, mine, theirs, name in rows:
        table.add_row(
            label,
            f"{_median(results, mine):.0f}",
            f"{_median(results, theirs):.0f}" if theirs else "-",
            ratio(name),
        )
    console.print(table)
    windows = ", ".join(
        f"{k} {min(v):.1f}-{max(v):.1f}s" for k, v in sorted(results.windows_s.items())
    )
    console.print(f"windows: {windows}")
    steady = results.rates.get("steady_writes_per_s", [0.0])[0]
    console.print(
        f"latency at {steady:.0f} writes/s, refresh interval "
        f"{results.config['refresh_interval_s']} s:"
    )
    for group in (results.latency_ms, results.latency_hops_ms):
        for name, lat in group.items():
            console.print(
                f"  {name}: p50 {lat.get('p50', 0):.0f} ms, p95 {lat.get('p95', 0):.0f} ms, "
                f"p99 {lat.get('p99', 0):.0f} ms, max {lat.get('max', 0):.0f} ms "
                f"(n={lat['count']:.0f})"
            )
    rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in results.peak_rss_mib.items())
    console.print(f"peak RSS: {rss}")
    for note in results.notes:
        console.print(f"[yellow]{note}[/]")
    for failure in results.failures:
        console.print(f"[red]FAILED: {failure}[/]")


class Service(StrEnum):
    api = "api"
    relay = "relay"
    indexer = "indexer"
    auth = "auth"


app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def run(
    repetitions: Annotated[
        int, typer.Option(min=1, help="Repetitions of each stage (pipeline and baseline).")
    ] = 3,
    window_seconds: Annotated[
        float, typer.Option(min=0.5, help="Seconds of steady work each measurement aims at.")
    ] = 6.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent writers.")] = 8,
    latency_seconds: Annotated[
        float, typer.Option(min=1, help="How long the steady-rate latency phase runs.")
    ] = 15.0,
    relay_batch: Annotated[
        int | None, typer.Option(min=1, help="The relay's batch_max_events for its stage.")
    ] = None,
    scale: Annotated[
        bool, typer.Option("--scale", help="Also measure how cost grows (bench.scale).")
    ] = False,
    stage: Annotated[
        list[str] | None,
        typer.Option(help=f"Only these stages (repeatable): {', '.join(STAGES)}."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where <YYYY-MM-DD>.json is written.")] = Path(
        __file__
    ).parent,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the servers' data and logs here.")
    ] = None,
    profile: Annotated[
        list[Service] | None,
        typer.Option(
            help="Run this service under pyinstrument (repeatable); its report lands in "
            "DATA_DIR/<name>.profile.txt."
        ),
    ] = None,
) -> None:
    """Each stage against its raw baseline, side by side, on one embedded stack."""
    profiled = tuple(p.value for p in profile or ())
    if profiled and data_dir is None:
        raise typer.BadParameter(
            "--profile needs --data-dir (the reports are written there)", param_hint="--profile"
        )
    unknown = set(stage or ()) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown stages {sorted(unknown)}", param_hint="--stage")
    config = BenchConfig(
        repetitions=repetitions,
        window_s=window_seconds,
        concurrency=concurrency,
        latency_seconds=latency_seconds,
        relay_batch=relay_batch,
        scale=scale,
        profile=profiled,
        stages=tuple(stage or STAGES),
    )
    console = Console()
    work_dir = data_dir or Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    try:
        results = asyncio.run(run_bench(config, work_dir, Console(stderr=True)))
    finally:
        if data_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{results.date}.json"
    if path.exists():  # a second run the same day keeps the first
        path = out / f"{results.date}-{datetime.now(UTC).strftime('%H%M%S')}.json"
    path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    print_table(results, console)
    console.print(f"written to {path}")
    if results.failures:
        console.print("[red]the bench FAILED: the numbers above are not a measurement[/]")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
