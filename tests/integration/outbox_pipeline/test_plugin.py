"""The pytest plugin users get (`outbox_pipeline.testing`), tested as a user meets it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

import outbox_pipeline.testing
from outbox_pipeline.testing import NotSearchableError, await_searchable
from tests.fixtures.api import ApiHandle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def test_the_plugin_is_registered_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    """Installing the package is all a user does: pytest loads the plugin by itself."""
    assert pytestconfig.pluginmanager.get_plugin("outbox_pipeline") is outbox_pipeline.testing


async def test_the_sample_users_test_outside_the_package_passes_with_the_plugin(
    tmp_path: Path,
) -> None:
    """examples/test_users_service.py in its own pytest run: no conftest of ours, its own
    embedded servers and services, a writer's client and `wait_searchable`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--basetemp",
        str(tmp_path / "run"),
        "examples/test_users_service.py",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text[-5000:]
    assert "2 passed" in text, text[-5000:]


async def test_wait_searchable_fails_loudly_when_the_write_never_becomes_searchable(
    api_client: ApiHandle,
) -> None:
    """No relay or indexer runs: the token's write is never indexed, and the wait says so
    after its timeout instead of passing or hanging."""
    headers = await api_client.writer_headers()
    r = await api_client.client.put(
        "/v1/collections/books/documents/b1", json={"title": "t"}, headers=headers
    )
    assert r.status_code == 201, r.text
    with pytest.raises(NotSearchableError, match="not searchable within 1s"):
        await await_searchable(api_client.client, r, timeout_s=1)
    refused = await api_client.client.put("/v1/collections/books/documents/b2", json={"t": 1})
    assert refused.status_code == 401
    with pytest.raises(NotSearchableError, match="carries no Outbox-Token"):
        await await_searchable(api_client.client, refused)
    with pytest.raises(TypeError, match="collection"):
        await await_searchable(api_client.client, r.headers["outbox-token"])
