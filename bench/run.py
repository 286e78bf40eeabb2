"""`make bench`: each stage against its own raw baseline, side by side, on one stack.

Absolute numbers on a shared 2-core machine are noise; the ratios are the result:

* `api_ratio`     = API writes/s (authenticated, through FastAPI) / the same transaction done
                    directly with the driver at the same concurrency (goal >= 0.7);
* `relay_ratio`   = relay catch-up rate over an outbox backlog / a raw change-stream read of
                    the same backlog (goal >= 0.8);
* `indexer_ratio` = indexer catch-up rate over a topic backlog / raw bulk indexing of the same
                    documents (goal >= 0.8);

plus end-to-end commit -> indexed latency (p50/p95/p99) at about half the sustainable write
rate, and the peak RSS of each service. Writes `bench/<YYYY-MM-DD>.json` and prints a table.

    python -m bench.run [--writes 3000] [--concurrency 8] [--latency-seconds 15]
                        [--out DIR] [--data-dir DIR [--profile relay ...]]
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from confluent_kafka import Consumer, TopicPartition
from elasticsearch import AsyncElasticsearch, NotFoundError
from rich.console import Console
from rich.table import Table

from bench.baselines import (
    Rate,
    operation_time,
    raw_bulk,
    raw_change_stream_read,
    raw_writes,
    run_concurrently,
)
from bench.load import api_client, document_body
from bench.pipeline import Pipeline
from infra.elastic import elastic_client
from infra.envelope import OutboxRecord, parse_time
from infra.kafka import admin_client, consumer_config
from infra.mongo import MongoClient, mongo_client
from infra.settings import Settings

COLLECTION = "bench"
GOALS = {"api_ratio": 0.7, "relay_ratio": 0.8, "indexer_ratio": 0.8}
STAGE_TIMEOUT_S = 300.0


@dataclass
class Results:
    """Everything `bench/<date>.json` holds."""

    date: str
    machine: dict[str, Any]
    config: dict[str, Any]
    rates: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if len(samples_ms) < 2:
        return {"count": float(len(samples_ms))}
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "count": float(len(samples_ms)),
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "max": round(max(samples_ms), 1),
    }


# --- stage helpers ---------------------------------------------------------------------------


async def api_writes(http: httpx.AsyncClient, *, n: int, concurrency: int) -> Rate:
    """POST creates through the API at `concurrency`."""
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        response = await http.post(
            f"/v1/collections/{COLLECTION}/documents", json=document_body_for(i)
        )
        if response.status_code != 201:
            failures += 1

    rate = await run_concurrently(n, concurrency, one)
    if failures:
        raise RuntimeError(f"{failures} of {n} API writes failed")
    return rate


def document_body_for(i: int) -> dict[str, Any]:
    import random  # noqa: PLC0415 - a seeded generator per document keeps bodies identical

    return document_body(random.Random(i), i)


def kafka_catch_up(
    settings: Settings, topic: str, expected: int, *, already: int = 0
) -> tuple[float, float]:
    """Blocking: count read_committed events of `topic` until `expected`.

    Returns (monotonic time of the first event after the `already` present, of the
    `expected`-th).
    """
    admin = admin_client(settings.kafka)
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while topic not in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} never appeared")
        time.sleep(0.05)
    partitions = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
    consumer = Consumer(consumer_config(settings.kafka, f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
    seen, first = 0, None
    try:
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay published {seen} of {expected} events")
            batch = consumer.consume(num_messages=10000, timeout=0.05)
            for message in batch:
                if message.error() is None:
                    seen += 1
            if seen > already and first is None:
                first = time.monotonic()
    finally:
        consumer.close()
    assert first is not None
    return first, time.monotonic()


async def es_count(es: AsyncElasticsearch, index: str) -> int:
    try:
        await es.indices.refresh(index=index)
        response = await es.count(index=index)
    except NotFoundError:
        return 0
    return int(response["count"])


def group_catch_up(settings: Settings, topic: str) -> tuple[float, float]:
    """Blocking: watch the indexer group's committed offsets until they reach the topic's end.

    The indexer commits only after Elasticsearch acknowledged, so this is "indexed" without
    polling Elasticsearch (whose refreshes would slow the very bulk being measured).
    Returns (monotonic time of the first commit, of the one reaching the end).
    """
    admin = admin_client(settings.kafka)
    partitions = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
    tps = [TopicPartition(topic, p) for p in partitions]
    watcher = Consumer(consumer_config(settings.kafka, settings.indexer.group_id))
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    first: float | None = None
    try:
        ends = [watcher.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        while True:
            committed = [max(tp.offset, 0) for tp in watcher.committed(tps, timeout=10)]
            now = time.monotonic()
            if any(committed) and first is None:
                first = now
            # Commit markers take an offset each: "caught up" is within one of the end.
            if all(c >= end - 1 for c, end in zip(committed, ends, strict=True)):
                assert first is not None
                return first, now
            if now > deadline:
                raise TimeoutError(f"indexer committed {committed} of {ends}")
            time.sleep(0.05)
    finally:
        watcher.close()


async def outbox_records(client: MongoClient, settings: Settings) -> list[OutboxRecord]:
    outbox = client[settings.mongo.database][settings.mongo.outbox_collection]
    return [OutboxRecord.from_mongo(raw) async for raw in outbox.find({})]


async def measure_latency(
    http: httpx.AsyncClient,
    es: AsyncElasticsearch,
    alias: str,
    *,
    rate_per_s: float,
    seconds: float,
    acked_at: dict[str, float],
) -> tuple[list[float], list[float]]:
    """Open-loop creates at `rate_per_s`; poll Elasticsearch (realtime mget) for each id.

    Returns (acknowledged -> visible in Elasticsearch, committed_at -> indexed_at) in ms,
    and fills `acked_at` (id -> acknowledged time) for the Kafka watcher's split.
    """
    acked: dict[str, float] = {}
    visible_ms: list[float] = []
    server_ms: list[float] = []
    done = asyncio.Event()

    async def write(i: int) -> None:
        response = await http.post(
            f"/v1/collections/{COLLECTION}/documents", json=document_body_for(10_000_000 + i)
        )
        if response.status_code == 201:
            document_id = str(response.json()["id"])
            acked[document_id] = acked_at[document_id] = time.monotonic()

    async def poll() -> None:
        while not done.is_set() or acked:
            ids = list(acked)
            if ids:
                response = await es.mget(
                    index=alias, ids=ids, source=["committed_at", "indexed_at"]
                )
                now = time.monotonic()
                for doc in response["docs"]:
                    if doc.get("found"):
                        visible_ms.append((now - acked.pop(doc["_id"])) * 1000)
                        source = doc.get("_source") or {}
                        if "indexed_at" in source:
                            delta = parse_time(source["indexed_at"]) - parse_time(
                                source["committed_at"]
                            )
                            server_ms.append(delta.total_seconds() * 1000)
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    writers = []
    started = time.monotonic()
    n = int(rate_per_s * seconds)
    for i in range(n):
        delay = started + i / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        writers.append(asyncio.create_task(write(i)))
    await asyncio.gather(*writers)
    done.set()
    await asyncio.wait_for(poller, timeout=STAGE_TIMEOUT_S)
    return visible_ms, server_ms


class KafkaWatcher:
    """A read_committed consumer thread noting when each document id first shows up."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.seen_at: dict[str, float] = {}
        self._settings = settings
        self._topic = topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-watcher", daemon=True)

    def __enter__(self) -> KafkaWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        admin = admin_client(self._settings.kafka)
        partitions = admin.list_topics(topic=self._topic, timeout=10).topics[self._topic]
        consumer = Consumer(consumer_config(self._settings.kafka, f"bench-{uuid.uuid4().hex[:8]}"))
        consumer.assign([TopicPartition(self._topic, p, -1) for p in partitions.partitions])
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=1000, timeout=0.02):
                    key = message.key()
                    if message.error() is None and key is not None:
                        self.seen_at.setdefault(key.decode(), time.monotonic())
        finally:
            consumer.close()


# --- the run ---------------------------------------------------------------------------------


async def run_bench(args: BenchConfig, data_dir: Path, console: Console) -> Results:
    results = Results(
        date=datetime.now(UTC).date().isoformat(),
        machine=machine_facts(),
        config={
            "writes": args.writes,
            "concurrency": args.concurrency,
            "latency_seconds": args.latency_seconds,
        },
    )
    pipeline = Pipeline.create(data_dir)
    pipeline.profile = set(args.profile)
    settings = pipeline.settings
    alias = settings.es.alias_for(COLLECTION)
    topic = settings.kafka.event_topic(COLLECTION)
    client = mongo_client(settings.mongo, app_name="bench")
    es = elastic_client(settings.es)
    try:
        await pipeline.start_servers()
        password = secrets.token_urlsafe(16)
        await pipeline.create_writer(password)
        await pipeline.start_services(["auth", "api", "relay"])
        token = await pipeline.token(password)
        async with api_client(pipeline.api_url, token, concurrency=args.concurrency) as http:
            # Warm-up: one event through the relay, so it has a checkpoint and catches up
            # below the way it does after any downtime (change stream from its checkpoint).
            # Two writes, one after the other: the first start's recovery ends with the first,
            # the second leaves an ordinary streaming checkpoint.
            for n in (1, 2):
                await api_writes(http, n=1, concurrency=1)
                await asyncio.to_thread(kafka_catch_up, settings, topic, n)
            await asyncio.to_thread(pipeline.service("relay").stop)
            start_at = await operation_time(client)

            console.log(f"writes: {args.writes} through the API, then raw, at {args.concurrency}")
            api = await api_writes(http, n=args.writes, concurrency=args.concurrency)
            raw = await raw_writes(
                client,
                settings,
                collection=COLLECTION,
                n=args.writes,
                concurrency=args.concurrency,
                body=document_body_for,
            )
            results.rates |= {"api_writes_per_s": api.per_s, "raw_writes_per_s": raw.per_s}
            results.ratios["api_ratio"] = api.per_s / raw.per_s

            backlog = 2 * args.writes
            console.log(f"relay: catch-up over a backlog of {backlog} vs a raw change stream")
            raw_stream = await raw_change_stream_read(
                client, settings, start_at=start_at, n=backlog
            )
            relay_started = time.monotonic()
            pipeline.service("relay").start()
            first, last = await asyncio.to_thread(
                kafka_catch_up, settings, topic, backlog + 2, already=2
            )
            relay = Rate(backlog, last - first)
            results.rates |= {
                "relay_events_per_s": relay.per_s,
                "relay_events_per_s_incl_startup": backlog / (last - relay_started),
                "raw_change_stream_events_per_s": raw_stream.per_s,
            }
            results.ratios["relay_ratio"] = relay.per_s / raw_stream.per_s

            console.log(f"indexer: catch-up over {backlog + 2} events vs raw bulk")
            records = await outbox_records(client, settings)
            raw_index = await raw_bulk(
                es, settings, records=records, index=f"{settings.es.index_prefix}raw-bulk"
            )
            indexer_started = time.monotonic()
            await pipeline.start_service("indexer")
            first, last = await asyncio.to_thread(group_catch_up, settings, topic)
            indexed = await es_count(es, alias)
            if indexed != len(records):
                raise RuntimeError(f"indexer caught up but {indexed} of {len(records)} indexed")
            indexer = Rate(len(records), last - first)
            results.rates |= {
                "indexer_docs_per_s": indexer.per_s,
                "indexer_docs_per_s_incl_startup": len(records) / (last - indexer_started),
                "raw_bulk_docs_per_s": raw_index.per_s,
            }
            results.ratios["indexer_ratio"] = indexer.per_s / raw_index.per_s

            steady = max(1.0, round(api.per_s / 2))
            console.log(f"latency: {steady:.0f} writes/s for {args.latency_seconds:.0f}s")
            acked_at: dict[str, float] = {}
            with KafkaWatcher(settings, topic) as watcher:
                await asyncio.sleep(1.0)  # assigned at the end before the first write
                visible, server = await measure_latency(
                    http,
                    es,
                    alias,
                    rate_per_s=steady,
                    seconds=args.latency_seconds,
                    acked_at=acked_at,
                )
            to_kafka = [
                (watcher.seen_at[i] - t) * 1000 for i, t in acked_at.items() if i in watcher.seen_at
            ]
            results.rates["steady_writes_per_s"] = steady
            results.latency_ms["commit_to_visible"] = percentiles(visible)
            results.latency_ms["commit_to_kafka"] = percentiles(to_kafka)
            if server:
                results.latency_ms["committed_at_to_indexed_at"] = percentiles(server)
    finally:
        await client.close()
        await es.close()
        await pipeline.stop()
    results.peak_rss_mib = {
        name: round(rss / 2**20, 1) for name, rss in sorted(pipeline.rss.peak_bytes.items())
    }
    results.rates = {k: round(v, 1) for k, v in results.rates.items()}
    results.ratios = {k: round(v, 3) for k, v in results.ratios.items()}
    for name, goal in GOALS.items():
        if results.ratios.get(name, 0.0) < goal:
            results.notes.append(f"{name} {results.ratios.get(name)} misses its goal {goal}")
    return results


def print_table(results: Results, console: Console) -> None:
    table = Table(title=f"outbox-pipeline bench {results.date} ({results.machine['cpus']} CPUs)")
    table.add_column("stage")
    table.add_column("pipeline", justify="right")
    table.add_column("raw baseline", justify="right")
    table.add_column("ratio (goal)", justify="right")
    r = results.rates

    def ratio(name: str) -> str:
        value = results.ratios.get(name, 0.0)
        mark = "[green]" if value >= GOALS[name] else "[red]"
        return f"{mark}{value:.2f}[/] (≥ {GOALS[name]})"

    table.add_row(
        "API writes/s vs driver txn",
        f"{r['api_writes_per_s']:.0f}",
        f"{r['raw_writes_per_s']:.0f}",
        ratio("api_ratio"),
    )
    table.add_row(
        "relay catch-up events/s vs change stream",
        f"{r['relay_events_per_s']:.0f}",
        f"{r['raw_change_stream_events_per_s']:.0f}",
        ratio("relay_ratio"),
    )
    table.add_row(
        "indexer catch-up docs/s vs raw bulk",
        f"{r['indexer_docs_per_s']:.0f}",
        f"{r['raw_bulk_docs_per_s']:.0f}",
        ratio("indexer_ratio"),
    )
    console.print(table)
    for name, lat in results.latency_ms.items():
        console.print(
            f"latency {name} at {r['steady_writes_per_s']:.0f} writes/s: "
            f"p50 {lat.get('p50', 0):.0f} ms, p95 {lat.get('p95', 0):.0f} ms, "
            f"p99 {lat.get('p99', 0):.0f} ms (n={lat['count']:.0f})"
        )
    rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in results.peak_rss_mib.items())
    console.print(f"peak RSS: {rss}")
    for note in results.notes:
        console.print(f"[yellow]{note}[/]")


class Service(StrEnum):
    api = "api"
    relay = "relay"
    indexer = "indexer"
    auth = "auth"


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures (the command's options)."""

    writes: int = 3000
    concurrency: int = 8
    latency_seconds: float = 15.0
    profile: tuple[str, ...] = ()


app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def run(
    writes: Annotated[int, typer.Option(min=1, help="Writes per side.")] = 3000,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent writers.")] = 8,
    latency_seconds: Annotated[
        float, typer.Option(min=1, help="How long the steady-rate latency phase runs.")
    ] = 15.0,
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
    config = BenchConfig(
        writes=writes, concurrency=concurrency, latency_seconds=latency_seconds, profile=profiled
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
    path.write_text(json.dumps(asdict(results), indent=2) + "\n")
    print_table(results, console)
    console.print(f"written to {path}")


if __name__ == "__main__":
    app()
