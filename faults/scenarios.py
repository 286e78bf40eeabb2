"""Fault scenarios: a mixed write load through the API while faults are injected, then an audit.

Every scenario starts its own embedded stack and services (`bench.pipeline`), writes
through the REST API (`bench.load`), injects its faults, waits for the pipeline to go
idle and audits the outbox against Kafka and MongoDB against Elasticsearch. Each prints
one line, `<scenario>: faults PASS|FAIL: lost=N duplicated=N drift=N misordered=N ...`.

- `kills`: SIGKILLs of the relay and the indexer (restarted at once, as a supervisor
  would), a second relay started by mistake with the same name, restarts of Kafka +
  Elasticsearch (one noida-db process here) and of MongoDB.
- `history-loss`: the same under load on a small oplog pruned every second, writes to a
  few hot documents throughout; the relay is also kept down while the oplog is pruned
  past its resume point. Every relay restart then recovers from the outbox while writes
  go on, and a recovery outlasts the oplog window.
- `split-relays`: two relay names over disjoint collections, both SIGKILLed repeatedly;
  one is also killed inside a commit (while a transaction of its is open) as the other
  restarts, which must commit again at once, not wait for that transaction.
- `hostile-writer`: relay and indexer SIGKILLs while, beside the load (on collections of
  its own), `bench.hostile_writer` writes the mix that once stopped the indexer for
  everyone (issue 11) under a small bulk byte cap. The audit covers the load's
  collections only; the hostile mix's own checks (`faults.hostile`) are judged after.
- `skewed-clocks`: the API's clock (which stamps record times today) 2 s ahead of the
  relay's and MongoDB's, then 2 s behind, with history losses, so that recovery windows
  and Kafka timestamps disagree by the skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import IsolationLevel, KafkaException
from confluent_kafka.admin import OffsetSpec
from elasticsearch import ApiError, TransportError
from pymongo.errors import PyMongoError
from rich.console import Console

from bench.hostile_writer import HostileExpectations, hostile_writes
from bench.load import LoadStats, MixedLoad, api_client
from bench.pipeline import Pipeline, ServiceProcess
from faults.clock import skewed_clock_env
from faults.hostile import (
    HostileObserved,
    HostileVerdict,
    PatientHostileWriter,
    indexer_bulks,
    judge,
    judge_when_settled,
)
from infra.devstack import free_port
from infra.errors import PipelineError
from infra.kafka import admin_client, topic_partitions
from infra.mongo import mongo_client
from infra.settings import Settings
from operator_tools.audit import AuditReport, DriftCounts, audit, audit_when_idle
from operator_tools.clients import OperatorClients, open_clients
from outbox_relay.kafka_reader import read_checkpoint

Step = Callable[[], Awaitable[None]]
RelaySpec = tuple[str, tuple[str, ...]]  # (relay name, its collections; () = all)

HISTORY_OPLOG_MAX_ENTRIES = 400
RESUME_DEADLINE_S = 45.0


@dataclass(frozen=True)
class FaultConfig:
    """How much load and which faults; see `SCENARIOS` for the named ones."""

    name: str
    min_writes: int
    concurrency: int
    documents_per_collection: int
    collections: tuple[str, ...]
    relay_kills: int
    indexer_kills: int
    second_relay_s: float  # 0: no second relay
    kafka_es_restarts: int
    mongo_restarts: int
    gap_s: tuple[float, float]  # pause between faults, drawn uniformly
    relays: tuple[RelaySpec, ...] = (("relay", ()),)
    history_loss: bool = False
    oplog_max_entries: int | None = None
    prune_every_s: float = 0.0  # 0: SecantusDB's own lazy pruning only
    commit_kills: int = 0  # a relay killed inside a commit while another restarts
    mongo_clock_s: float = 0.0
    api_clock_s: float = 0.0
    recovery_margin_s: float | None = None  # None: the default
    tail_s: float = 3.0  # load keeps running this long after the last fault
    idle_timeout_s: float = 240.0
    # Longer than a Kafka consumer group's session timeout (librdkafka: 45 s): after a kill -9
    # the restarted indexer may wait that long for the group to drop its dead predecessor.
    settle_s: float = 60.0
    seed: int = 1
    hostile: bool = False  # the hostile writer (`faults.hostile`) beside the load
    bulk_max_bytes: int | None = None  # the indexer's bulk byte cap; None: the default
    audited: tuple[str, ...] = ()  # the collections the audit covers; (): every one

    @property
    def kills(self) -> int:
        return self.relay_kills + self.indexer_kills


def kills(*, short: bool = False) -> FaultConfig:
    if short:
        return FaultConfig(
            name="kills",
            min_writes=300,
            concurrency=4,
            documents_per_collection=60,
            collections=("books", "authors"),
            relay_kills=3,
            indexer_kills=3,
            second_relay_s=4.0,
            kafka_es_restarts=1,
            mongo_restarts=1,
            gap_s=(0.5, 1.5),
            idle_timeout_s=150.0,
        )
    return FaultConfig(
        name="kills",
        min_writes=4000,
        concurrency=8,
        documents_per_collection=400,
        collections=("books", "authors"),
        relay_kills=12,
        indexer_kills=12,
        second_relay_s=10.0,
        kafka_es_restarts=2,
        mongo_restarts=2,
        gap_s=(1.0, 4.0),
    )


def history_loss(*, short: bool = False) -> FaultConfig:
    """Small oplog pruned every second, hot documents, every relay restart a recovery."""
    return replace(
        kills(short=short),
        name="history-loss",
        documents_per_collection=15 if short else 40,
        history_loss=True,
        oplog_max_entries=HISTORY_OPLOG_MAX_ENTRIES,
        prune_every_s=1.0,
    )


def split_relays(*, short: bool = False) -> FaultConfig:
    return replace(
        kills(short=short),
        name="split-relays",
        relays=(("r-books", ("books",)), ("r-authors", ("authors",))),
        second_relay_s=0.0,
        relay_kills=4 if short else 12,
        commit_kills=1 if short else 3,
        kafka_es_restarts=0 if short else 1,
        mongo_restarts=0 if short else 1,
    )


def skewed_clocks(offset_s: float, *, short: bool = False) -> FaultConfig:
    """The API's clock `offset_s` from the relay's (and MongoDB's).

    The API stamps each record's `time` today, so its clock moves record times against
    the relay's Kafka timestamps and MongoDB's cluster times. The relay itself cannot run
    under libfaketime (librdkafka's timed waits then take seconds), and SecantusDB under
    it is too slow for a 3 s lease on two cores; a relay clock behind MongoDB's is
    `test_a_relay_clock_behind_mongodb_repeats_nothing_after_history_loss`.
    """
    return replace(
        kills(short=short),
        name=f"skewed-clocks({offset_s:+.0f}s)",
        # libfaketime slows the API's gRPC client: fewer writes keep the run to minutes.
        min_writes=300 if short else 1500,
        api_clock_s=offset_s,
        history_loss=True,
        oplog_max_entries=HISTORY_OPLOG_MAX_ENTRIES,
        relay_kills=3 if short else 6,
        indexer_kills=1 if short else 3,
        second_relay_s=0.0,
        # No server restarts here (the kills scenario has them): SecantusDB restarted under
        # libfaketime refuses the resume tokens it minted before, as another namespace's.
        kafka_es_restarts=0,
        mongo_restarts=0,
        # Small enough that a 2 s skew is a fifth of it; the transactions here take ms.
        recovery_margin_s=10.0,
    )


# Above one of the mix's 200 kB documents, under two: its batch (4 of them) cannot go out
# in one request. A bucket bound of the indexer's bulk-bytes histogram, so that
# `faults.hostile.bulks_over_cap` can tell that no request went over it.
HOSTILE_BULK_MAX_BYTES = 256 * 1024
HOSTILE_LOAD_COLLECTIONS = ("novels", "writers")  # none of bench.hostile_writer's


def hostile_writer(*, short: bool = False) -> FaultConfig:
    """Relay and indexer SIGKILLs while the hostile mix runs beside the load.

    The load writes collections of its own, and only those are audited: the hostile
    collections hold poison and a parked collection by design, checked by `faults.hostile`.
    The small byte cap makes the mix's batch (several times the cap) go out in several bulks.
    """
    return replace(
        kills(short=short),
        name="hostile-writer",
        min_writes=300 if short else 1500,
        collections=HOSTILE_LOAD_COLLECTIONS,
        audited=HOSTILE_LOAD_COLLECTIONS,
        relay_kills=3 if short else 6,
        indexer_kills=3 if short else 6,
        second_relay_s=0.0,
        kafka_es_restarts=0,
        mongo_restarts=0,
        hostile=True,
        bulk_max_bytes=HOSTILE_BULK_MAX_BYTES,
    )


SCENARIOS: dict[str, Callable[..., list[FaultConfig]]] = {
    "kills": lambda short=False: [kills(short=short)],
    "history-loss": lambda short=False: [history_loss(short=short)],
    "split-relays": lambda short=False: [split_relays(short=short)],
    "skewed-clocks": lambda short=False: [
        skewed_clocks(+2.0, short=short),
        skewed_clocks(-2.0, short=short),
    ],
    "hostile-writer": lambda short=False: [hostile_writer(short=short)],
}


@dataclass
class FaultResult:
    """What ran and what the audit found."""

    config: FaultConfig
    load: LoadStats
    audit: AuditReport
    faults: Counter[str] = field(default_factory=Counter)
    stalled: int = 0  # a relay that did not resume beside another's open transaction
    elapsed_s: float = 0.0
    log_excerpts: list[str] = field(default_factory=list)
    hostile: HostileVerdict | None = None  # the hostile writer's checks, when it ran

    @property
    def ok(self) -> bool:
        hostile_ok = self.hostile is None or self.hostile.ok
        return self.audit.ok and self.stalled == 0 and hostile_ok

    def summary(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        verdict = "PASS" if self.ok else "FAIL"
        stalled = f" stalled={self.stalled}" if self.config.commit_kills else ""
        hostile = f" | {self.hostile.summary()}" if self.hostile is not None else ""
        return (
            f"{self.config.name}: faults {verdict}: {self.audit.summary()}{stalled}{hostile} | "
            f"{self.load.summary()} | injected: {faults} | {self.elapsed_s:.0f}s"
        )


def relay_settings(base: Settings, name: str, collections: tuple[str, ...]) -> Settings:
    """One relay name's settings: its list, and a metrics port of its own beside the others."""
    port = base.relay.metrics_port if name == base.relay.name else free_port()
    relay = base.relay.model_copy(
        update={"name": name, "collections": list(collections), "metrics_port": port}
    )
    return base.model_copy(update={"relay": relay})


class FaultInjector:
    """Runs the fault schedule against a live pipeline."""

    def __init__(self, pipeline: Pipeline, config: FaultConfig, console: Console) -> None:
        self._pipeline = pipeline
        self._config = config
        self._rng = random.Random(config.seed)
        self._console = console
        self.done: Counter[str] = Counter()
        self.stalled = 0

    @property
    def relays(self) -> list[str]:
        return [name for name, _ in self._config.relays]

    def _say(self, text: str) -> None:
        self._console.log(f"[{self._config.name}] {text}")

    async def _pause(self) -> None:
        await asyncio.sleep(self._rng.uniform(*self._config.gap_s))

    async def run(self) -> None:
        for step in self._plan():
            await self._pause()
            await step()

    def _plan(self) -> list[Step]:
        config = self._config
        steps: list[Step] = [self._kill_relay] * config.relay_kills
        steps += [self._kill_indexer] * config.indexer_kills
        self._rng.shuffle(steps)
        # Server restarts and the special faults spread evenly through the kills.
        specials: list[Step] = [self._restart_kafka_es] * config.kafka_es_restarts
        specials += [self._restart_mongo] * config.mongo_restarts
        specials += [self._kill_inside_commit] * config.commit_kills
        if config.second_relay_s > 0:
            specials.append(self._second_relay)
        if config.history_loss:
            specials.append(self._history_loss)
        self._rng.shuffle(specials)
        for n, special in enumerate(specials):
            steps.insert((n + 1) * len(steps) // (len(specials) + 1) + n, special)
        return steps

    async def _kill(self, service: ServiceProcess) -> None:
        service.kill()
        self.done[f"kill_{service.command}"] += 1
        await asyncio.sleep(self._rng.uniform(0.0, 0.5))
        service.start()  # on the loop's thread: see bench.pipeline

    async def _kill_relay(self) -> None:
        name = self._rng.choice(self.relays)
        self._say(f"SIGKILL {name}")
        await self._kill(self._pipeline.service(name))

    async def _kill_indexer(self) -> None:
        self._say("SIGKILL indexer")
        await self._kill(self._pipeline.service("indexer"))

    async def _second_relay(self) -> None:
        """A relay with the same name next to the running one; one of the two dies later."""
        self._say("second relay started by mistake")
        extra = self._pipeline.spawn_extra("relay", f"relay-extra-{self.done['second_relay']}")
        self.done["second_relay"] += 1
        await asyncio.sleep(self._config.second_relay_s)
        if self._rng.random() < 0.5:
            self._say("SIGKILL the mistaken relay")
            extra.kill()
        else:
            self._say("SIGKILL the original relay; the mistaken one takes over")
            original = self._pipeline.service("relay")
            original.kill()
            # Long enough for the lease to pass to the mistaken relay and for it to publish.
            await asyncio.sleep(self._pipeline.settings.relay.lease_ttl_seconds + 2.0)
            original.start()  # standing by now; the mistaken relay hands over as it stops
            extra.stop()
        self.done["kill_relay"] += 1

    async def _kill_inside_commit(self) -> None:
        """Relay A dies inside a commit (its transaction left open) while B restarts.

        Waits until one of A's event partitions shows an open transaction (its last
        stable offset behind its high watermark), SIGKILLs A then, SIGKILLs and restarts
        B, which must commit again while A's transaction is open (the stand-in never
        times it out), then restarts A, whose `init_transactions` aborts it.
        """
        victim, other = self._rng.sample(self.relays, 2)
        a, b = self._pipeline.service(victim), self._pipeline.service(other)
        topics = [
            self._pipeline.settings.kafka.event_topic(c)
            for name, collections in self._config.relays
            if name == victim
            for c in collections
        ]
        caught = await asyncio.to_thread(wait_for_open_transaction, self._pipeline, topics)
        a.kill()
        self._say(
            f"SIGKILL {victim} {'inside a commit' if caught else '(no commit caught)'}, "
            f"restart {other} meanwhile"
        )
        self.done["kill_inside_commit" if caught else f"kill_{a.command}"] += 1
        try:
            b.kill()
            restarted = datetime.now(UTC)
            b.start()
            self.done[f"kill_{b.command}"] += 1
            if not await self._resumed(other, restarted):
                self.stalled += 1
                self._say(f"[red]{other} did not commit beside {victim}'s open transaction")
        finally:
            a.start()  # its init_transactions aborts the transaction it left open

    async def _resumed(self, relay: str, since: datetime) -> bool:
        """Whether `relay` committed a checkpoint after `since`, within the deadline."""
        kafka = self._pipeline.settings.kafka
        deadline = time.monotonic() + RESUME_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                checkpoint = await read_checkpoint(kafka, relay)
            except (KafkaException, PipelineError) as e:
                self._say(f"reading {relay}'s checkpoint: {e}")
                checkpoint = None
            written = None if checkpoint is None else checkpoint.written_at
            if written is not None and written > since:
                return True
            await asyncio.sleep(0.5)
        return False

    async def _restart_kafka_es(self) -> None:
        self._say("restart Kafka + Elasticsearch (one noida-db process)")
        server = self._pipeline.stack.kafka_es
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(self._rng.uniform(0.5, 2.0))
        await asyncio.to_thread(server.start)
        self.done["restart_kafka_es"] += 1

    async def _restart_mongo(self) -> None:
        self._say("restart MongoDB")
        server = self._pipeline.stack.mongo
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(self._rng.uniform(0.5, 2.0))
        await asyncio.to_thread(server.start)
        self.done["restart_mongo"] += 1

    async def _history_loss(self) -> None:
        """Relays down, enough writes to overflow the oplog, prune, relays up again."""
        self._say("history loss: relays down, oplog pruned past their resume points")
        relays = [self._pipeline.service(name) for name in self.relays]
        for relay in relays:
            relay.kill()
            self.done[f"kill_{relay.command}"] += 1
        client = mongo_client(self._pipeline.settings.mongo, app_name="faults")
        try:
            db = client[self._pipeline.settings.mongo.database]
            outbox = db[self._pipeline.settings.mongo.outbox_collection]
            start = await outbox.count_documents({})
            deadline = time.monotonic() + 60
            # Each write is at least two oplog entries: this overflows the oplog twice over.
            while await outbox.count_documents({}) - start < HISTORY_OPLOG_MAX_ENTRIES:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            try:
                await client.admin.command({"secantusAdmin.pruneOplog": 1})
            except PyMongoError as e:
                self._say(f"pruneOplog failed: {e}")
        finally:
            await client.close()
        for relay in relays:
            relay.start()
        self.done["history_loss"] += 1


def wait_for_open_transaction(
    pipeline: Pipeline, topics: list[str], timeout_s: float = 10.0
) -> bool:
    """Block until a partition of `topics` has an open transaction; False at the timeout."""
    settings = pipeline.settings.kafka
    admin = admin_client(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            parts = topic_partitions(settings, topics)
            ends = {
                level: admin.list_offsets(
                    {tp: OffsetSpec.latest() for tp in parts},  # type: ignore[no-untyped-call]
                    isolation_level=level,
                    request_timeout=5,
                )
                for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
            }
            stable = {
                tp: f.result().offset for tp, f in ends[IsolationLevel.READ_COMMITTED].items()
            }
            high = {
                tp: f.result().offset for tp, f in ends[IsolationLevel.READ_UNCOMMITTED].items()
            }
        except (KafkaException, PipelineError):
            time.sleep(0.05)
            continue
        if any(stable[tp] < high[tp] for tp in stable):
            return True
        time.sleep(0.005)
    return False


async def prune_oplog(settings: Settings, every_s: float, stop: asyncio.Event) -> None:
    """Prune the oplog every `every_s` (SecantusDB only prunes every 1000 writes by itself)."""
    client = mongo_client(settings.mongo, app_name="faults-pruner")
    try:
        while not stop.is_set():
            with contextlib.suppress(PyMongoError):  # restarting: prune on the next round
                await client.admin.command({"secantusAdmin.pruneOplog": 1})
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                continue
    finally:
        await client.close()


def build_pipeline(config: FaultConfig, data_dir: Path) -> Pipeline:
    pipeline = Pipeline.create(data_dir, oplog_max_entries=config.oplog_max_entries)
    settings = pipeline.settings
    if config.recovery_margin_s is not None:
        relay = settings.relay.model_copy(
            update={"recovery_margin_seconds": config.recovery_margin_s}
        )
        settings = settings.model_copy(update={"relay": relay})
        pipeline.settings = settings
    if config.bulk_max_bytes is not None:
        indexer = settings.indexer.model_copy(update={"bulk_max_bytes": config.bulk_max_bytes})
        settings = settings.model_copy(update={"indexer": indexer})
        pipeline.settings = settings
    pipeline.mongo_env = skewed_clock_env(config.mongo_clock_s)
    pipeline.add_service("auth", "auth")
    pipeline.add_service("api", "api", env=skewed_clock_env(config.api_clock_s))
    for name, collections in config.relays:
        pipeline.add_service(name, "relay", settings=relay_settings(settings, name, collections))
    pipeline.add_service("indexer", "indexer")
    return pipeline


async def run_faults(
    config: FaultConfig, data_dir: Path, console: Console | None = None
) -> FaultResult:
    """Start a pipeline in `data_dir`, run load + faults, wait for idle, audit, stop."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    pipeline = build_pipeline(config, data_dir)
    injector = FaultInjector(pipeline, config, console)
    stop = asyncio.Event()
    try:
        console.log(f"[{config.name}] starting the stack in {data_dir}")
        await pipeline.start_servers()
        password = secrets.token_urlsafe(16)
        await pipeline.create_writer(password)
        await pipeline.start_services(list(pipeline.services))
        token = await pipeline.token(password)
        pruner = asyncio.create_task(
            prune_oplog(pipeline.settings, config.prune_every_s, stop)
            if config.prune_every_s
            else stop.wait()
        )
        async with (
            api_client(pipeline.api_url, token, concurrency=config.concurrency) as http,
            open_clients(pipeline.settings, app_name="faults-hostile") as clients,
        ):
            hostile = asyncio.create_task(
                run_hostile(config, pipeline.settings, http, token, clients)
            )
            load = MixedLoad(
                http,
                collections=config.collections,
                documents_per_collection=config.documents_per_collection,
                concurrency=config.concurrency,
                seed=config.seed,
            )
            load_task = asyncio.create_task(load.run(stop))
            try:
                await injector.run()
                await asyncio.sleep(config.tail_s)
                while load.stats.committed < config.min_writes and not load_task.done():  # noqa: ASYNC110 - polls a counter, not an event
                    await asyncio.sleep(0.2)
                expect, hostile_error = await hostile  # the load runs until it is through
            finally:
                stop.set()
                stats = await load_task
                await pruner
                if not hostile.done():
                    hostile.cancel()
            console.log(f"[{config.name}] load done: {stats.summary()}; waiting for idle")
            _ensure_running(pipeline, console)
            if config.audited:
                report = await audit_collections_when_idle(
                    clients,
                    config.audited,
                    timeout_s=config.idle_timeout_s,
                    settle_s=config.settle_s,
                )
            else:
                report = await audit_when_idle(
                    pipeline.settings, timeout_s=config.idle_timeout_s, settle_s=config.settle_s
                )
            verdict: HostileVerdict | None = None
            if config.hostile:
                # Checked while the load's collections are known to be indexed: the hostile
                # collections' state then, with `books-v1` still parked.
                verdict = (
                    judge(expect, HostileObserved(), error=hostile_error)
                    if hostile_error
                    else await judge_when_settled(
                        clients, expect, timeout_s=HOSTILE_SETTLE_TIMEOUT_S
                    )
                )
                if config.bulk_max_bytes is not None and not hostile_error:
                    try:
                        bulks = await indexer_bulks(
                            pipeline.settings.indexer.metrics_port, config.bulk_max_bytes
                        )
                    except (httpx.HTTPError, ValueError) as e:
                        verdict = replace(verdict, error=f"reading the indexer's metrics: {e}")
                    else:
                        verdict = replace(verdict, bulks=bulks[0], bulks_over_cap=bulks[1])
                console.log(f"[{config.name}] {verdict.summary()}")
    finally:
        stop.set()
        await pipeline.stop()
    result = FaultResult(
        config=config,
        load=stats,
        audit=report,
        faults=injector.done,
        stalled=injector.stalled,
        elapsed_s=time.monotonic() - started,
        hostile=verdict,
    )
    if not result.ok:
        result.log_excerpts = log_excerpts(data_dir)
    return result


HOSTILE_SETTLE_TIMEOUT_S = 90.0


async def run_hostile(
    config: FaultConfig,
    settings: Settings,
    http: httpx.AsyncClient,
    token: str,
    clients: OperatorClients,
) -> tuple[HostileExpectations, str]:
    """The hostile mix when `config.hostile`: its expectations, and what failed, if it did."""
    if not config.hostile:
        return HostileExpectations(), ""
    writer = PatientHostileWriter(
        api=http, headers={"Authorization": f"Bearer {token}"}, settings=settings, es=clients.es
    )
    try:
        return await hostile_writes(writer, over_bytes=settings.indexer.bulk_max_bytes), ""
    except (AssertionError, httpx.HTTPError, KafkaException, ApiError, TransportError) as e:
        return HostileExpectations(), f"{type(e).__name__}: {e}"[:300]


def combined_report(reports: Sequence[AuditReport], collections: Sequence[str]) -> AuditReport:
    """One report from per-collection audits: counts summed, examples and notes joined."""
    if not reports:
        raise ValueError("no audit to combine")
    first = reports[0]
    window = replace(first.window, collection=",".join(collections))
    examples: dict[str, list[Any]] = {}
    for report in reports:
        for kind, shown in report.examples.items():
            examples.setdefault(kind, []).extend(shown)
    drift = DriftCounts(
        **{kind: sum(r.drift.as_dict()[kind] for r in reports) for kind in first.drift.as_dict()}
    )
    summed = {
        name: sum(getattr(r, name) for r in reports)
        for name in (
            "outbox_records",
            "kafka_messages",
            "documents",
            "indexed_documents",
            "lost",
            "extra_copies",
            "unknown_events",
            "misordered",
            "replayed",
            "pending",
            "unindexed",
            "recovered",
            "outside_window",
        )
    }
    return AuditReport(
        window=window,
        drift=drift,
        examples={k: tuple(v) for k, v in examples.items()},
        notes=tuple(dict.fromkeys(n for r in reports for n in r.notes)),
        read_s=sum(r.read_s for r in reports),
        **summed,
    )


async def audit_collections_when_idle(
    clients: OperatorClients,
    collections: Sequence[str],
    *,
    timeout_s: float,
    settle_s: float,
    interval_s: float = 2.0,
) -> AuditReport:
    """`audit_when_idle` over `collections` only: one settled audit each, combined."""
    deadline = time.monotonic() + timeout_s
    last_change = time.monotonic()
    previous: tuple[int, ...] | None = None
    while True:
        report = combined_report(
            [await audit(clients, settled=True, collection=c) for c in collections], collections
        )
        if report.ok:
            return report
        now = time.monotonic()
        if report.fingerprint() != previous:
            previous, last_change = report.fingerprint(), now
        if now - last_change >= settle_s or now >= deadline:
            return report
        await asyncio.sleep(interval_s)


def log_excerpts(data_dir: Path, per_service: int = 6) -> list[str]:
    """The last warnings and errors each service logged: where to start reading on a FAIL."""
    lines = []
    for path in sorted(data_dir.glob("*.log")):
        noteworthy = [
            line[:300]
            for line in path.read_text(errors="replace").splitlines()
            if ('"level": "warning"' in line or '"level": "error"' in line)
        ]
        lines += [f"{path.stem}: {line}" for line in noteworthy[-per_service:]]
    return lines


def _ensure_running(pipeline: Pipeline, console: Console) -> None:
    """A service that died on its own during the faults is a finding, but keep auditing."""
    for name, service in pipeline.services.items():
        if not service.running:
            console.log(f"[red]{name} is not running[/] (see {service.log_path})")
            service.start()
