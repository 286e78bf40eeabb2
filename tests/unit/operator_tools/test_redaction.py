"""A password in a server URL never reaches an error message, an HTTP answer or the CLI.

Every server here is a closed port on loopback: the connection fails at once, and what
matters is the text that reports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from api.routes.operator import _problem
from infra.devstack import free_port
from infra.elastic import elastic_client
from infra.elastic import ping as es_ping
from infra.errors import ServerUnreachableError
from infra.mongo import mongo_client
from infra.mongo import ping as mongo_ping
from infra.settings import ElasticSettings, MongoSettings, Settings
from operator_tools.clients import open_clients
from operator_tools.status import status

PASSWORD = "S3cret-Passw0rd"


def dead_settings() -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        env="test",
        mongo=MongoSettings(
            uri=SecretStr(
                f"mongodb://opsuser:{PASSWORD}@127.0.0.1:{free_port()}/?directConnection=true"
            ),
            server_selection_timeout_ms=200,
        ),
        es=ElasticSettings(url=f"http://elastic:{PASSWORD}@127.0.0.1:{free_port()}"),
    )


async def test_the_ops_status_answer_names_the_server_without_its_password() -> None:
    """`/v1/ops/status` returns `_problem(e)` for what `status()` raised (security M5)."""
    settings = dead_settings()
    async with open_clients(settings) as clients:
        with pytest.raises(ServerUnreachableError) as raised:
            await status(clients)
    problem = _problem(raised.value)
    assert problem.status == 503
    assert PASSWORD not in str(problem.detail)
    assert "opsuser:***@127.0.0.1" in str(problem.detail) or "elastic:***@" in str(problem.detail)


@pytest.mark.parametrize("server", ["mongo", "es"])
async def test_each_operator_ping_masks_the_password(server: str) -> None:
    settings = dead_settings()
    async with open_clients(settings) as clients:
        ping = clients.ping_mongo if server == "mongo" else clients.ping_es
        with pytest.raises(ServerUnreachableError) as raised:
            await ping()
    assert PASSWORD not in str(raised.value)
    assert ":***@127.0.0.1:" in str(raised.value)


async def test_service_pings_mask_the_password() -> None:
    """The services' own readiness checks (their messages reach logs and /readyz)."""
    settings = dead_settings()
    client = mongo_client(settings.mongo, app_name="test")
    try:
        with pytest.raises(ServerUnreachableError) as mongo_down:
            await mongo_ping(client, settings.mongo)
    finally:
        await client.close()
    es = elastic_client(settings.es.model_copy(update={"request_timeout_s": 1.0}))
    try:
        with pytest.raises(ServerUnreachableError) as es_down:
            await es_ping(es, settings.es)
    finally:
        await es.close()
    for raised in (mongo_down, es_down):
        assert PASSWORD not in str(raised.value)
        assert ":***@127.0.0.1:" in str(raised.value)


def test_the_cli_reports_an_unreachable_server_without_its_password(tmp_path: Path) -> None:
    settings = dead_settings()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env |= {
        "OUTBOX_SECRETS_DIR": str(tmp_path / "secrets"),
        "OUTBOX_MONGO_URI": settings.mongo.uri.get_secret_value(),
        "OUTBOX_MONGO_SERVER_SELECTION_TIMEOUT_MS": "200",
        "OUTBOX_ES_URL": settings.es.url,
        "OUTBOX_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "outbox_cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "unreachable" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
