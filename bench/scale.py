"""`python -m bench.run --scale`: how cost grows, one variable at a time.

* the relay's catch-up rate, peak RSS and events per CPU-second over outbox backlogs of
  10k and 100k records (1M is left out: seeding and reading it takes SecantusDB many
  minutes on two cores; `--scale-relay-max` in the code below raises it);
* the indexer's rate and peak RSS at document sizes of 1 KiB, 64 KiB and 512 KiB;
* the API's write rate and peak RSS at concurrency 1, 8 and 32.

Each on a stage of its own (MongoDB database, Kafka namespace, index prefix), seeded
straight through the drivers like `make bench`'s stages. Single measurements: the shape of
each curve is the result, not its third digit.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psutil
from elasticsearch import AsyncElasticsearch
from rich.console import Console

from bench.baselines import run_concurrently
from bench.load import document_body
from bench.pipeline import Pipeline, ServiceProcess
from bench.stats import rate_after_first
from infra.kafka import ensure_topics, event_topic_config
from infra.mongo import mongo_client

RELAY_BACKLOGS = (10_000, 100_000)
DOC_SIZES = {"1KiB": (1024, 3000), "64KiB": (64 * 1024, 600), "512KiB": (512 * 1024, 120)}
CONCURRENCIES = (1, 8, 32)
API_WRITES = 400


class PeakRss:
    """Samples one process's RSS (and reads its CPU time) while a step runs."""

    def __init__(self, service: ServiceProcess) -> None:
        self._service = service
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        pid = self._service.pid
        if pid is None:
            return
        try:
            rss = int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return
        self.peak_bytes = max(self.peak_bytes, rss)

    def cpu_seconds(self) -> float:
        pid = self._service.pid
        if pid is None:
            return 0.0
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    @property
    def peak_mib(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


class CpuMark:
    """The process's CPU time at one moment (called from another thread)."""

    def __init__(self, rss: PeakRss) -> None:
        self._rss = rss
        self.value = 0.0

    def mark(self) -> None:
        self.value = self._rss.cpu_seconds()


@contextmanager
def sampling(service: ServiceProcess) -> Iterator[PeakRss]:
    rss = PeakRss(service)
    rss._thread.start()
    try:
        yield rss
    finally:
        rss._stop.set()
        rss._thread.join(timeout=5)


async def run_scale(
    pipeline: Pipeline,
    es: AsyncElasticsearch,
    console: Console,
    *,
    http: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["relay"] = await relay_scale(pipeline, console)
    out["indexer"] = await indexer_scale(pipeline, es, console)
    if http is not None:
        out["api"] = await api_scale(pipeline, http, console)
    return out


async def relay_scale(pipeline: Pipeline, console: Console) -> list[dict[str, Any]]:
    from bench import run  # noqa: PLC0415 - run imports this module lazily too

    settings = run.stage_settings(pipeline.settings, "benchscale")
    settings = settings.model_copy(
        update={"relay": settings.relay.model_copy(update={"lease_ttl_seconds": 30.0})}
    )
    topic = settings.kafka.event_topic(run.COLLECTION)
    client = mongo_client(settings.mongo, app_name="bench-scale")
    relay = pipeline.add_service("relay-scale", "relay", settings=settings)
    rows: list[dict[str, Any]] = []
    try:
        relay.start()
        await run.insert_outbox(client, settings, run.bench_records(run.COLLECTION, 1, first=0))
        await asyncio.to_thread(run._drain, settings, topic, 1)
        await asyncio.to_thread(relay.stop)
        first = 1
        for backlog in RELAY_BACKLOGS:
            records = run.bench_records(run.COLLECTION, backlog, first=first)
            first += backlog
            await run.insert_outbox(client, settings, records)
            del records
            hw = await asyncio.to_thread(run.high_watermarks, settings, topic)
            relay.start()
            with sampling(relay) as rss:
                cpu_at_first = CpuMark(rss)
                at_first, t0, t1 = await asyncio.to_thread(
                    run.count_events, settings, hw, backlog, on_first=cpu_at_first.mark
                )
                cpu_used = rss.cpu_seconds() - cpu_at_first.value
                rss.sample()
            await asyncio.to_thread(relay.stop)
            rate = rate_after_first(backlog, at_first, t0, t1)
            row = {
                "backlog": backlog,
                "events_per_s": round(rate.per_s),
                "window_s": round(rate.seconds, 2),
                "peak_rss_mib": rss.peak_mib,
                "cpu_cores_used": round(cpu_used / rate.seconds, 2) if rate.seconds else None,
                "events_per_cpu_second": round(rate.count / cpu_used) if cpu_used else None,
            }
            console.log(f"scale relay: {row}")
            rows.append(row)
    finally:
        await asyncio.to_thread(relay.stop)
        await client.close()
    return rows


async def indexer_scale(
    pipeline: Pipeline, es: AsyncElasticsearch, console: Console
) -> list[dict[str, Any]]:
    from bench import run  # noqa: PLC0415

    rows: list[dict[str, Any]] = []
    for label, (size, count) in DOC_SIZES.items():
        settings = run.stage_settings(pipeline.settings, f"benchsize{label.lower()}")
        topic = settings.kafka.event_topic(run.COLLECTION)
        await ensure_topics(settings.kafka, {topic: event_topic_config(settings.kafka)})
        records = run.bench_records(run.COLLECTION, count, first=0, pad_bytes=size)
        await asyncio.to_thread(run.produce_plain, settings, records, topic)
        del records
        indexer = pipeline.add_service(f"indexer-{label}", "indexer", settings=settings)
        indexer.start()
        try:
            await pipeline.wait_ready(indexer)
            with sampling(indexer) as rss:
                rate = await asyncio.to_thread(run.group_catch_up, settings, topic)
                rss.sample()
        finally:
            await asyncio.to_thread(indexer.stop)
        row = {
            "doc_size": label,
            "docs": count,
            "docs_per_s": round(rate.per_s),
            "mib_per_s": round(rate.per_s * size / 2**20, 1),
            "window_s": round(rate.seconds, 2),
            "peak_rss_mib": rss.peak_mib,
        }
        console.log(f"scale indexer: {row}")
        rows.append(row)
    return rows


async def api_scale(
    pipeline: Pipeline, http: httpx.AsyncClient, console: Console
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    api = pipeline.service("api")
    for concurrency in CONCURRENCIES:
        failures = 0

        async def one(i: int) -> None:
            nonlocal failures
            response = await http.post(
                "/v1/collections/scale/documents", json=document_body(random.Random(i), i)
            )
            if response.status_code != 201:
                failures += 1

        with sampling(api) as rss:
            started = time.perf_counter()
            rate = await run_concurrently(API_WRITES, concurrency, one)
            del started
            rss.sample()
        row = {
            "concurrency": concurrency,
            "writes_per_s": round(rate.per_s, 1),
            "window_s": round(rate.seconds, 2),
            "failed": failures,
            "peak_rss_mib": rss.peak_mib,
        }
        console.log(f"scale api: {row}")
        rows.append(row)
    return rows
