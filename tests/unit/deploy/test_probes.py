"""The Python one-liners compose.yaml uses as healthchecks really tell healthy from not.

Each probe runs as compose would run it (`python -c ...`), pointed at a loopback stand-in
on a free port: an HTTP server answering with a chosen status, or a gRPC health service.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from infra.devstack import free_port
from tests.unit.deploy.deploy_files import COMPOSE_FILE, healthcheck_command, load_yaml

PROBE_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE_FILE)["services"]  # type: ignore[no-any-return]


def probe_code(service: dict[str, Any], port: int) -> str:
    """The service's `python -c` code, its loopback port replaced by `port`."""
    command = healthcheck_command(service)
    assert command[:3] == ["CMD", "python", "-c"], command
    code, count = re.subn(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", command[3])
    assert count == 1, code
    return code


def run_probe(code: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
    )
    return result.returncode


class StatusServer:
    """Answers every GET on `path` with `status` (404 elsewhere); `status` can change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.status = HTTPStatus.OK
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = outer.status if self.path == outer.path else HTTPStatus.NOT_FOUND
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.mark.parametrize(
    ("name", "path"), [("api", "/readyz"), ("relay", "/healthz"), ("indexer", "/healthz")]
)
def test_http_probe_passes_on_200_and_fails_otherwise(
    services: dict[str, dict[str, Any]], name: str, path: str
) -> None:
    with StatusServer(path) as server:
        code = probe_code(services[name], server.port)
        assert run_probe(code) == 0
        server.status = HTTPStatus.SERVICE_UNAVAILABLE
        assert run_probe(code) != 0
    assert run_probe(code) != 0, "nothing listening must fail too"


@pytest.fixture
def grpc_health() -> Iterator[tuple[int, health.HealthServicer]]:
    servicer = health.HealthServicer()
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None).wait()


def test_grpc_probe_follows_the_overall_health_status(
    services: dict[str, dict[str, Any]], grpc_health: tuple[int, health.HealthServicer]
) -> None:
    """SERVING passes; NOT_SERVING (auth lost MongoDB) and no server at all fail."""
    port, servicer = grpc_health
    code = probe_code(services["auth"], port)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run_probe(code) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run_probe(code) != 0
    assert run_probe(probe_code(services["auth"], free_port())) != 0
