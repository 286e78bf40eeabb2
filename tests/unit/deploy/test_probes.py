"""The Python one-liners compose.yaml uses as healthchecks really tell healthy from not.

Each probe runs as compose would run it (`python -c ...`), pointed at a loopback stand-in
on a free port: an HTTP server answering with a chosen status. (The auth service is probed
on its metrics port's /readyz, which follows MongoDB like its gRPC health status, and keeps
working when the gRPC port speaks TLS.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

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
    ("name", "path"),
    [("auth", "/readyz"), ("api", "/readyz"), ("relay", "/healthz"), ("indexer", "/healthz")],
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
