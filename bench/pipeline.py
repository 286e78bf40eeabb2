"""A whole pipeline under the harness's control: embedded servers plus service processes.

Unlike `outbox dev` (whose supervisor restarts what crashes), every process here is started,
killed and restarted by the caller, which is what a fault harness needs: a SIGKILL at a moment
it picks, a second relay with the same name, a server restart. Service processes are spawned
from the event loop's thread only: Linux's parent-death signal follows the spawning thread.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel

from infra.devstack import EmbeddedStack, free_port, port_in_use
from infra.process import die_with_parent, kill, terminate
from infra.settings import (
    ElasticSettings,
    KafkaSettings,
    LogSettings,
    MongoSettings,
    RelaySettings,
    Settings,
    settings_to_env,
)

SERVICES = ("auth", "api", "relay", "indexer")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WRITER = "bench-writer"


class PipelineError(RuntimeError):
    """The harness could not bring a service up."""


@dataclass
class ServiceProcess:
    """One service process (`python -m outbox_cli <command>`), logging to a file."""

    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    profile_to: Path | None = None  # run under pyinstrument, its text report written here

    @property
    def argv(self) -> list[str]:
        service = ["-m", "outbox_cli", self.command]
        if self.profile_to is None:
            return [sys.executable, *service]
        profiler = [
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "--show-all",
            "-o",
            str(self.profile_to),
        ]
        return [sys.executable, *profiler, *service]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # Only calls prctl, and we spawn from the loop's thread only.
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        kill(self.process)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        terminate(self.process, timeout_s)


class RssSampler:
    """Samples the resident set size of named processes in a thread; keeps each one's peak."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self._interval_s = interval_s
        self._targets: dict[str, ServiceProcess] = {}
        self.peak_bytes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, service: ServiceProcess) -> None:
        self._targets[service.name] = service

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for name, service in list(self._targets.items()):
                pid = service.pid
                if pid is None:
                    continue
                try:
                    rss = int(psutil.Process(pid).memory_info().rss)
                except psutil.Error:  # exited between the check and the read
                    continue
                self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), rss)


def harness_settings(stack: EmbeddedStack, *, namespace: str = "outbox") -> Settings:
    """Settings for services on the harness's own stack and free ports.

    Every `*port` setting gets a free port, so the harness runs next to `outbox dev` or a
    test suite. The relay's lease is shortened (heartbeat 1 s, TTL 3 s) so that a relay
    started after a SIGKILL takes over within seconds; the rest keeps its default.
    """
    base = Settings(
        env="dev",
        mongo=MongoSettings(uri=stack.mongo_uri, database=namespace),
        kafka=KafkaSettings(bootstrap=stack.kafka_bootstrap, namespace=namespace),
        es=ElasticSettings(url=stack.es_url, index_prefix=f"{namespace}-"),
        relay=RelaySettings(heartbeat_seconds=1.0, lease_ttl_seconds=3.0),
        log=LogSettings(level="info", format="json"),
    )
    update: dict[str, BaseModel] = {}
    for name in type(base).model_fields:
        section = getattr(base, name)
        if isinstance(section, BaseModel):
            ports = {f: free_port() for f in type(section).model_fields if f.endswith("port")}
            if ports:
                update[name] = section.model_copy(update=ports)
    settings = base.model_copy(update=update)
    auth = settings.auth.model_copy(update={"target": f"127.0.0.1:{settings.auth.port}"})
    return settings.model_copy(update={"auth": auth})


@dataclass
class Pipeline:
    """Embedded servers + auth, api, relay and indexer processes, all under one data dir."""

    data_dir: Path
    stack: EmbeddedStack
    settings: Settings
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    rss: RssSampler = field(default_factory=RssSampler)
    extra: list[ServiceProcess] = field(default_factory=list)
    profile: set[str] = field(default_factory=set)  # services to run under pyinstrument

    # Environment for the MongoDB server process (e.g. a skewed clock); set before starting.
    mongo_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, data_dir: Path, *, oplog_max_entries: int | None = None) -> Pipeline:
        data_dir.mkdir(parents=True, exist_ok=True)
        stack = EmbeddedStack.on_free_ports(data_dir / "stack", oplog_max_entries=oplog_max_entries)
        return cls(data_dir=data_dir, stack=stack, settings=harness_settings(stack))

    def add_service(
        self,
        name: str,
        command: str,
        *,
        settings: Settings | None = None,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        """Register a service under its own name: a second relay name, a skewed API clock."""
        service = ServiceProcess(
            name=name,
            command=command,
            env=os.environ | settings_to_env(settings or self.settings) | (env or {}),
            log_path=self.data_dir / f"{name}.log",
        )
        self.services[name] = service
        self.rss.watch(service)
        return service

    @property
    def env(self) -> dict[str, str]:
        return os.environ | settings_to_env(self.settings)

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api.host}:{self.settings.api.port}"

    async def start_servers(self) -> None:
        await asyncio.to_thread(self.stack.start)
        if self.mongo_env:
            mongo = self.stack.mongo
            await asyncio.to_thread(mongo.stop)
            mongo.argv = ["env", *(f"{k}={v}" for k, v in self.mongo_env.items()), *mongo.argv]
            await asyncio.to_thread(mongo.start)
        self.rss.start()

    def service(self, name: str) -> ServiceProcess:
        if name not in self.services:
            self.services[name] = ServiceProcess(
                name=name,
                command=name,
                env=self.env,
                log_path=self.data_dir / f"{name}.log",
                profile_to=self.data_dir / f"{name}.profile.txt" if name in self.profile else None,
            )
            self.rss.watch(self.services[name])
        return self.services[name]

    async def start_service(self, name: str) -> ServiceProcess:
        """Start `name` (spawned on the loop's thread) and wait until it answers, if it can."""
        service = self.service(name)
        service.start()
        await self.wait_ready(service)
        return service

    async def wait_ready(self, service: ServiceProcess) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not service.running:
                raise PipelineError(f"{service.name} exited while starting; see {service.log_path}")
            if await self._answers(service.command):
                return
            await asyncio.sleep(0.1)
        raise PipelineError(f"{service.name} not ready in {READY_TIMEOUT_S:.0f}s")

    async def _answers(self, command: str) -> bool:
        if command == "auth":
            return await asyncio.to_thread(port_in_use, self.settings.auth.port)
        if command == "api":
            try:
                async with httpx.AsyncClient(timeout=1.0) as client:
                    response = await client.get(f"{self.api_url}/healthz")
            except httpx.HTTPError:
                return False
            return response.status_code == 200
        return True  # relay and indexer have no endpoint of their own to ask

    def spawn_extra(self, command: str, label: str) -> ServiceProcess:
        """Another process of `command` with the same settings (a relay started by mistake).

        Only its metrics port differs, or it would die on the port instead of on the lease.
        """
        settings = self.settings.model_copy(
            update={"relay": self.settings.relay.model_copy(update={"metrics_port": free_port()})}
        )
        extra = ServiceProcess(
            name=label,
            command=command,
            env=os.environ | settings_to_env(settings),
            log_path=self.data_dir / f"{label}.log",
        )
        extra.start()
        self.extra.append(extra)
        self.rss.watch(extra)
        return extra

    async def start_services(self, names: Iterable[str] = SERVICES) -> None:
        for name in names:
            await self.start_service(name)

    async def create_writer(self, password: str) -> None:
        """A writer user, made with the CLI the way an operator would."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox_cli",
            "users",
            "create",
            WRITER,
            "--role",
            "writer",
            "--password-stdin",
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate((password + "\n").encode())
        if process.returncode != 0 and b"already exists" not in stderr:
            raise PipelineError(f"users create failed: {stderr.decode(errors='replace')[-500:]}")

    async def token(self, password: str) -> str:
        """The writer's token; a 503 while the auth service warms up is waited out."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.api_url, timeout=30.0) as client:
            while True:
                response = await client.post(
                    "/v1/auth/token", json={"username": WRITER, "password": password}
                )
                if response.status_code != 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        if response.status_code != 200:
            raise PipelineError(f"token request failed: {response.status_code} {response.text}")
        return str(response.json()["access_token"])

    async def stop(self) -> None:
        """Stop every process (services in reverse order, then the servers)."""
        for extra in self.extra:
            await asyncio.to_thread(extra.stop)
        for name in reversed(list(self.services)):
            service = self.services[name]
            # A profiled service renders its report on the way out: give it time.
            timeout_s = STOP_TIMEOUT_S if service.profile_to is None else 120.0
            await asyncio.to_thread(service.stop, timeout_s)
        self.rss.stop()
        await asyncio.to_thread(self.stack.stop)
