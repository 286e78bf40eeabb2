"""`outbox dev`: the embedded servers plus every service, supervised in one process tree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from pydantic import SecretStr
from rich.console import Console

from infra.devstack import (
    EmbeddedStack,
    ServerProcess,
    ServerStartError,
    free_port,
    port_in_use,
)
from infra.logging import configure_logging
from infra.settings import Settings, redact_uri, settings_to_env
from outbox_cli.supervisor import ServiceSpec, ServiceStartError, Supervisor, child_env

log = structlog.get_logger(__name__)

# The embedded servers' ports; the services' come from their settings (OUTBOX_API_PORT, ...).
SERVER_PORTS = {"mongo": 27017, "kafka": 9092, "es": 9200}
DEV_USER = "dev"
SERVER_WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Endpoints:
    api_url: str
    auth_target: str
    mongo_uri: str
    kafka_bootstrap: str
    es_url: str
    metrics: dict[str, str]  # service → Prometheus scrape URL

    def write(self, data_dir: Path) -> Path:
        path = data_dir / "endpoints.json"
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        return path


def _tcp_ready(port: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(port_in_use, port)

    return check


def _http_ready(url: str) -> Callable[[], Awaitable[bool]]:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except OSError:
            return False

    async def check() -> bool:
        return await asyncio.to_thread(get)

    return check


def _port(configured: int, free: bool) -> int:
    return free_port() if free else configured


def service_specs(settings: Settings) -> list[ServiceSpec]:
    env = child_env(settings_to_env(settings))
    python = [sys.executable, "-m", "outbox_cli"]
    return [
        ServiceSpec("auth", [*python, "auth"], env, ready=_tcp_ready(settings.auth.port)),
        ServiceSpec(
            "api",
            [*python, "api"],
            env,
            ready=_http_ready(f"http://{settings.api.host}:{settings.api.port}/healthz"),
        ),
        ServiceSpec("relay", [*python, "relay"], env),
        ServiceSpec("indexer", [*python, "indexer"], env),
    ]


def _metrics_urls(settings: Settings) -> dict[str, str]:
    return {
        "api": f"http://{settings.api.host}:{settings.api.port}/metrics",
        "auth": f"http://{settings.auth.metrics_host}:{settings.auth.metrics_port}/metrics",
        "relay": f"http://{settings.relay.metrics_host}:{settings.relay.metrics_port}/metrics",
        "indexer": (
            f"http://{settings.indexer.metrics_host}:{settings.indexer.metrics_port}/metrics"
        ),
    }


def _ensure_dev_user(settings: Settings, data_dir: Path) -> tuple[str, str] | None:
    """A dev admin whose password lives in DATA_DIR/dev-credentials (mode 0600)."""
    path = data_dir / "dev-credentials"
    if path.exists():
        username, _, password = path.read_text().strip().partition(":")
        return username, password
    password = secrets.token_urlsafe(12)
    error = create_user(settings, DEV_USER, password, role="admin")
    if error is not None:
        log.warning("dev_user_not_created", stderr=error)
        return None
    write_private_file(path, f"{DEV_USER}:{password}\n")
    return DEV_USER, password


def create_user(settings: Settings, username: str, password: str, *, role: str) -> str | None:
    """`outbox users create` against `settings`' MongoDB; None, or why it failed."""
    result = subprocess.run(  # noqa: S603 - our own CLI
        [
            sys.executable,
            "-m",
            "outbox_cli",
            "users",
            "create",
            username,
            "--role",
            role,
            "--password-stdin",
        ],
        input=password,
        text=True,
        capture_output=True,
        env=child_env(settings_to_env(settings)),
        check=False,
    )
    return None if result.returncode == 0 else result.stderr.strip()[-500:]


def write_private_file(path: Path, text: str) -> None:
    """Create `path` readable by its owner only from the first byte on.

    O_EXCL refuses an existing file and does not follow a symlink planted at `path`.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def _watch_servers(stack: EmbeddedStack) -> None:
    """Report a crashed embedded server loudly (with its log) and start it again."""
    while True:
        await asyncio.sleep(SERVER_WATCH_INTERVAL_S)
        for server in stack.crashed():
            await _restart_server(server)


async def _restart_server(server: ServerProcess) -> None:
    log.error(
        "server_crashed",
        server=server.name,
        exit_code=server.exit_code(),
        log_tail=server.log_tail(),
    )
    try:
        await asyncio.to_thread(server.start)
        log.warning("server_restarted", server=server.name)
    except ServerStartError as e:  # reported; the next tick tries again
        log.error("server_restart_failed", server=server.name, error=str(e))  # noqa: TRY400 - the message has the log tail


class ServerAddresses(Protocol):
    """Where the three servers answer (an `EmbeddedStack`, or URLs from elsewhere)."""

    @property
    def mongo_uri(self) -> str: ...

    @property
    def kafka_bootstrap(self) -> str: ...

    @property
    def es_url(self) -> str: ...


def dev_settings(base: Settings, stack: ServerAddresses | None, *, free_ports: bool) -> Settings:
    """`base` pointed at `stack`'s servers (when given), services on free ports if asked.

    `outbox dev` and the pytest plugin (`outbox_pipeline.testing`) both build on it."""
    auth_port = _port(base.auth.port, free_ports)
    api_port = _port(base.api.port, free_ports)
    return base.model_copy(
        update={
            "mongo": base.mongo.model_copy(update={"uri": SecretStr(stack.mongo_uri)})
            if stack
            else base.mongo,
            "kafka": base.kafka.model_copy(update={"bootstrap": stack.kafka_bootstrap})
            if stack
            else base.kafka,
            "es": base.es.model_copy(update={"url": stack.es_url}) if stack else base.es,
            "auth": base.auth.model_copy(
                update={
                    "port": auth_port,
                    "target": f"127.0.0.1:{auth_port}",
                    "metrics_port": _port(base.auth.metrics_port, free_ports),
                }
            ),
            "api": base.api.model_copy(update={"port": api_port}),
            "relay": base.relay.model_copy(
                update={"metrics_port": _port(base.relay.metrics_port, free_ports)}
            ),
            "indexer": base.indexer.model_copy(
                update={"metrics_port": _port(base.indexer.metrics_port, free_ports)}
            ),
        }
    )


async def run_dev(data_dir: Path, *, free_ports: bool, external: bool) -> None:
    """Start everything, print the endpoints, run until cancelled, stop everything."""
    console = Console(stderr=True)
    base = Settings()
    stack: EmbeddedStack | None = None
    if not external:
        stack = EmbeddedStack(
            data_dir=data_dir,
            mongo_port=_port(SERVER_PORTS["mongo"], free_ports),
            kafka_port=_port(SERVER_PORTS["kafka"], free_ports),
            es_port=_port(SERVER_PORTS["es"], free_ports),
        )
        console.print(f"starting embedded servers (data in {data_dir}) …")
        await asyncio.to_thread(stack.start)
    settings = dev_settings(base, stack, free_ports=free_ports)
    supervisor = Supervisor()
    watcher: asyncio.Task[None] | None = None
    try:
        if stack is not None:
            watcher = asyncio.create_task(_watch_servers(stack))
        await supervisor.start(service_specs(settings))
        credentials = await asyncio.to_thread(_ensure_dev_user, settings, data_dir)
        endpoints = Endpoints(
            api_url=f"http://{settings.api.host}:{settings.api.port}",
            auth_target=settings.auth.target,
            mongo_uri=settings.mongo.display_uri,  # no password in a file or on the screen
            kafka_bootstrap=settings.kafka.bootstrap,
            es_url=redact_uri(settings.es.url),
            metrics=_metrics_urls(settings),
        )
        path = endpoints.write(data_dir)
        _print_banner(console, endpoints, path, credentials)
        await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels us
    finally:
        console.print("stopping …")
        if watcher is not None:
            watcher.cancel()
        await supervisor.stop()
        if stack is not None:
            await asyncio.to_thread(stack.stop)
        console.print("stopped")


def _print_banner(
    console: Console, endpoints: Endpoints, path: Path, credentials: tuple[str, str] | None
) -> None:
    console.print("\n[bold green]outbox dev is ready[/]")
    console.print(f"  API        {endpoints.api_url}  (docs: {endpoints.api_url}/docs)")
    console.print(f"  auth gRPC  {endpoints.auth_target}")
    console.print(f"  MongoDB    {endpoints.mongo_uri}")
    console.print(f"  Kafka      {endpoints.kafka_bootstrap}")
    console.print(f"  Elastic    {endpoints.es_url}")
    console.print(f"  endpoints  {path}")
    if credentials:
        console.print(f"  dev admin  {credentials[0]} / {credentials[1]}  (from {path.parent})")
    console.print("Ctrl-C stops everything.\n")


def dev_main(data_dir: Path, *, free_ports: bool, external: bool) -> None:
    """Entry point for the `outbox dev` command."""
    settings = Settings()
    configure_logging(settings.log, service="dev")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_run_until_signal(data_dir, free_ports=free_ports, external=external))
    except (ServerStartError, ServiceStartError) as e:
        Console(stderr=True).print(f"[bold red]outbox dev could not start:[/] {e}")
        raise SystemExit(1) from e


async def _run_until_signal(data_dir: Path, *, free_ports: bool, external: bool) -> None:
    task = asyncio.ensure_future(run_dev(data_dir, free_ports=free_ports, external=external))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):  # the signal's normal way out
        await task
