"""`outbox dev`: the newcomer's path from nothing to a searchable document, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

ENDPOINT_KEYS = {"api_url", "auth_target", "mongo_uri", "kafka_bootstrap", "es_url", "metrics"}
START_TIMEOUT_S = 60.0


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["OUTBOX_LOG_FORMAT"] = "json"
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "outbox_cli", "dev", "--free-ports", "--data-dir", str(tmp_path)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (tmp_path / "endpoints.json").exists():
            assert process.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "outbox dev was not ready in time"
            time.sleep(0.2)
        yield process, tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def _wait_until(condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_dev_serves_the_whole_pipeline_and_stops_cleanly(
    dev_stack: tuple[subprocess.Popen[bytes], Path],
) -> None:
    """Endpoints file, dev login, a write that becomes searchable, then SIGTERM stops all."""
    process, data_dir = dev_stack
    endpoints = json.loads((data_dir / "endpoints.json").read_text())
    assert set(endpoints) >= ENDPOINT_KEYS
    username, _, password = (data_dir / "dev-credentials").read_text().strip().partition(":")
    children = _descendants(process.pid)
    assert len(children) >= 6  # two servers and four services

    with httpx.Client(base_url=endpoints["api_url"], timeout=10) as api:
        token = api.post("/v1/auth/token", json={"username": username, "password": password})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = api.post(
            "/v1/collections/books/documents",
            json={"id": "dune", "title": "Dune", "author": "Frank Herbert"},
            headers=headers,
        )
        assert created.status_code == 201, created.text

        def searchable() -> bool:
            found = api.get("/v1/collections/books/search", params={"q": "Dune"})
            return found.status_code == 200 and any(
                hit["id"] == "dune" and hit["version"] == 1 for hit in found.json()["hits"]
            )

        _wait_until(searchable)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
