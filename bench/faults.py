"""`make faults`: drive a mixed write load through the API while injecting faults, then audit.

Faults: SIGKILL of the relay and of the indexer (each restarted at once, as a supervisor
would), a second relay started by mistake with the same name, a restart of the Kafka and
Elasticsearch server, a restart of MongoDB. In this embedded stack one noida-db process
serves both Kafka and Elasticsearch, so the Kafka restart and the Elasticsearch restart are
the same process restart. With `--history-loss` the relay is also kept down while the
MongoDB oplog is pruned past its resume point, so it must recover without its change-stream
history.

When the load and the faults are done it waits for the pipeline to go idle and audits (see
`bench.audit`). It prints one summary line, `lost=N duplicated=N drift=N misordered=N`, and
exits non-zero unless all are 0.

    python -m bench.faults                 # the full run: >= 20 kills, a few minutes
    python -m bench.faults --short         # the CI configuration, about a minute
    python -m bench.faults --history-loss  # also force change-stream history loss
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymongo.errors import PyMongoError
from rich.console import Console

from bench.audit import AuditReport, audit_when_idle
from bench.load import LoadStats, MixedLoad, api_client
from bench.pipeline import Pipeline, ServiceProcess
from infra.mongo import mongo_client

HISTORY_OPLOG_MAX_ENTRIES = 400

Step = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class FaultConfig:
    """How much load and which faults; `full()` for people, `short()` for CI."""

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
    history_loss: bool = False
    tail_s: float = 3.0  # load keeps running this long after the last fault
    idle_timeout_s: float = 240.0
    # Longer than a Kafka consumer group's session timeout (librdkafka: 45 s): after a kill -9
    # the restarted indexer may wait that long for the group to drop its dead predecessor.
    settle_s: float = 60.0
    seed: int = 1

    @classmethod
    def full(cls, *, history_loss: bool = False) -> FaultConfig:
        return cls(
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
            history_loss=history_loss,
        )

    @classmethod
    def short(cls, *, history_loss: bool = False) -> FaultConfig:
        return cls(
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
            history_loss=history_loss,
            idle_timeout_s=150.0,
        )

    @property
    def kills(self) -> int:
        return self.relay_kills + self.indexer_kills


@dataclass
class FaultResult:
    """What ran and what the audit found."""

    config: FaultConfig
    load: LoadStats
    audit: AuditReport
    faults: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    log_excerpts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.audit.ok

    def summary(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        verdict = "PASS" if self.ok else "FAIL"
        return (
            f"faults {verdict}: {self.audit.summary()} | {self.load.summary()} | "
            f"injected: {faults} | {self.elapsed_s:.0f}s"
        )


class FaultInjector:
    """Runs the fault schedule against a live pipeline."""

    def __init__(self, pipeline: Pipeline, config: FaultConfig, console: Console) -> None:
        self._pipeline = pipeline
        self._config = config
        self._rng = random.Random(config.seed)
        self._console = console
        self.done: Counter[str] = Counter()

    def _say(self, text: str) -> None:
        self._console.log(text)

    async def _pause(self) -> None:
        await asyncio.sleep(self._rng.uniform(*self._config.gap_s))

    async def run(self) -> None:
        plan = self._plan()
        for step in plan:
            await self._pause()
            await step()

    def _plan(self) -> list[Step]:
        config = self._config
        steps: list[Step] = [self._kill_relay] * config.relay_kills
        steps += [self._kill_indexer] * config.indexer_kills
        self._rng.shuffle(steps)
        # Server restarts and the second relay spread evenly through the kills.
        specials: list[Step] = [self._restart_kafka_es] * config.kafka_es_restarts
        specials += [self._restart_mongo] * config.mongo_restarts
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
        self.done[f"kill_{service.name}"] += 1
        await asyncio.sleep(self._rng.uniform(0.0, 0.5))
        service.start()  # on the loop's thread: see bench.pipeline

    async def _kill_relay(self) -> None:
        self._say("SIGKILL relay")
        await self._kill(self._pipeline.service("relay"))

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
        """Relay down, enough writes to overflow the oplog, prune, relay up again."""
        self._say("history loss: relay down, oplog pruned past its resume point")
        relay = self._pipeline.service("relay")
        relay.kill()
        self.done["kill_relay"] += 1
        client = mongo_client(self._pipeline.settings.mongo, app_name="bench-faults")
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
        relay.start()
        self.done["history_loss"] += 1


async def run_faults(
    config: FaultConfig, data_dir: Path, console: Console | None = None
) -> FaultResult:
    """Start a pipeline in `data_dir`, run load + faults, wait for idle, audit, stop."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    pipeline = Pipeline.create(
        data_dir,
        oplog_max_entries=HISTORY_OPLOG_MAX_ENTRIES if config.history_loss else None,
    )
    try:
        console.log(f"starting the stack in {data_dir}")
        await pipeline.start_servers()
        password = secrets.token_urlsafe(16)
        await pipeline.create_writer(password)
        await pipeline.start_services()
        token = await pipeline.token(password)
        injector = FaultInjector(pipeline, config, console)
        stop = asyncio.Event()
        async with api_client(pipeline.api_url, token, concurrency=config.concurrency) as http:
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
            finally:
                stop.set()
                stats = await load_task
        console.log(f"load done: {stats.summary()}; waiting for the pipeline to go idle")
        _ensure_running(pipeline)
        report = await audit_when_idle(
            pipeline.settings, timeout_s=config.idle_timeout_s, settle_s=config.settle_s
        )
    finally:
        await pipeline.stop()
    return FaultResult(
        config=config,
        load=stats,
        audit=report,
        faults=injector.done,
        elapsed_s=time.monotonic() - started,
        log_excerpts=[] if report.ok else log_excerpts(data_dir),
    )


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


def _ensure_running(pipeline: Pipeline) -> None:
    """A service that died on its own during the faults is a finding, but keep auditing."""
    for name, service in pipeline.services.items():
        if not service.running:
            Console(stderr=True).log(f"[red]{name} is not running[/] (see {service.log_path})")
            service.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the short CI configuration")
    parser.add_argument(
        "--history-loss", action="store_true", help="also force change-stream history loss"
    )
    parser.add_argument("--data-dir", type=Path, help="keep servers' data and logs here")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    make = FaultConfig.short if args.short else FaultConfig.full
    config = make(history_loss=args.history_loss)
    config = FaultConfig(**{**config.__dict__, "seed": args.seed})
    console = Console(stderr=True)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="outbox-faults-"))
    result = asyncio.run(run_faults(config, data_dir, console))
    for line in result.audit.details() + result.log_excerpts:
        console.print(f"  {line}", markup=False, highlight=False)
    if result.ok and not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    elif not result.ok:
        console.print(f"  servers' and services' logs kept in {data_dir}")
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
