"""Secure by default in prod: the auth service refuses a weak signing secret at start-up
(the real `outbox auth` command), half-configured TLS is refused, and the API hides its
schema and docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.auth_client import auth_channel
from api.main import create_app, tls_files
from auth_grpc.server import server_credentials
from infra.devstack import free_port
from infra.settings import (
    MIN_TOKEN_SECRET_BYTES,
    ApiSettings,
    AuthSettings,
    ConfigurationError,
    Settings,
)


def run_outbox(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The real `outbox` command in a child process, with only the given OUTBOX_* settings.

    MongoDB points at a closed port: a service that got past its checks would wait for it,
    and the timeout would fail the test instead of a false pass.
    """
    base = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    child_env = {
        **base,
        "OUTBOX_SECRETS_DIR": str(tmp_path / "secrets"),
        "OUTBOX_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        "OUTBOX_MONGO_SERVER_SELECTION_TIMEOUT_MS": "200",
        "OUTBOX_AUTH_PORT": str(free_port()),
        "OUTBOX_AUTH_METRICS_PORT": str(free_port()),
        "OUTBOX_LOG_FORMAT": "json",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "outbox_cli", *args],
        env=child_env,
        cwd=tmp_path,  # no .env from the work tree
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def misconfiguration(result: subprocess.CompletedProcess[str]) -> str:
    """The `service_misconfigured` log line's error text (and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [line] = [line for line in lines if line["event"] == "service_misconfigured"]
    assert line["level"] == "error"
    return str(line["error"])


def test_outbox_auth_in_prod_without_a_secret_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_outbox("auth", env={"OUTBOX_ENV": "prod"}, tmp_path=tmp_path)
    assert result.returncode == 2
    error = misconfiguration(result)
    assert "OUTBOX_AUTH_TOKEN_SECRET is not set" in error
    assert "openssl rand -hex 32" in error


@pytest.mark.parametrize("where", ["environment", "secret file"])
def test_outbox_auth_in_prod_with_a_short_secret_exits_with_a_clear_message(
    tmp_path: Path, where: str
) -> None:
    short = "s" * (MIN_TOKEN_SECRET_BYTES - 1)
    env = {"OUTBOX_ENV": "prod"}
    if where == "environment":
        env["OUTBOX_AUTH_TOKEN_SECRET"] = short
    else:
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "OUTBOX_AUTH_TOKEN_SECRET").write_text(short)
    result = run_outbox("auth", env=env, tmp_path=tmp_path)
    assert result.returncode == 2
    error = misconfiguration(result)
    assert f"{MIN_TOKEN_SECRET_BYTES - 1} bytes; at least {MIN_TOKEN_SECRET_BYTES}" in error
    assert short not in result.stderr


@pytest.mark.parametrize(
    ("command", "setting", "named"),
    [
        ("auth", "OUTBOX_AUTH_TLS_CERT", "OUTBOX_AUTH_TLS_KEY"),
        ("api", "OUTBOX_API_TLS_KEY", "OUTBOX_API_TLS_CERT"),
        ("api", "OUTBOX_AUTH_TLS_CLIENT_CERT", "OUTBOX_AUTH_TLS_CA"),
    ],
)
def test_a_service_refuses_half_configured_tls_at_start(
    tmp_path: Path, command: str, setting: str, named: str
) -> None:
    result = run_outbox(
        command,
        env={"OUTBOX_ENV": "test", setting: str(tmp_path / "file.pem")},
        tmp_path=tmp_path,
    )
    assert result.returncode == 2
    assert named in misconfiguration(result)


def test_half_configured_tls_is_refused_everywhere(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="OUTBOX_AUTH_TLS_KEY"):
        server_credentials(AuthSettings(tls_cert=missing))
    with pytest.raises(ConfigurationError, match="OUTBOX_AUTH_TLS_CLIENT_CA needs"):
        server_credentials(AuthSettings(tls_client_ca=missing))
    with pytest.raises(ConfigurationError, match="cannot be read"):
        server_credentials(AuthSettings(tls_cert=missing, tls_key=missing))
    with pytest.raises(ConfigurationError, match="need OUTBOX_AUTH_TLS_CA"):
        auth_channel(AuthSettings(tls_client_cert=missing, tls_client_key=missing))
    with pytest.raises(ConfigurationError, match="OUTBOX_AUTH_TLS_CLIENT_KEY"):
        auth_channel(AuthSettings(tls_ca=missing, tls_client_cert=missing))
    with pytest.raises(ConfigurationError, match="OUTBOX_API_TLS_KEY"):
        tls_files(ApiSettings(tls_cert=missing))
    with pytest.raises(ConfigurationError, match=r"OUTBOX_API_TLS_CERT=.* cannot be read"):
        tls_files(ApiSettings(tls_cert=missing, tls_key=missing))
    assert server_credentials(AuthSettings()) is None
    assert tls_files(ApiSettings()) is None


@pytest.fixture(params=[("prod", None), ("prod", True), ("dev", None), ("dev", False)])
async def app_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[bool, httpx.AsyncClient]]:
    """The app without its lifespan, per (OUTBOX_ENV, OUTBOX_API_DOCS); and whether docs
    should be served."""
    env, docs = request.param
    api = ApiSettings(docs=docs, consistency_key=SecretStr("k" * 32))
    settings = Settings(_env_file=None, env=env, api=api)  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield (docs if docs is not None else env != "prod"), client


async def test_docs_and_openapi_are_off_in_prod_unless_enabled(
    app_client: tuple[bool, httpx.AsyncClient],
) -> None:
    served, client = app_client
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await client.get(path)).status_code == (200 if served else 404), path
    assert (await client.get("/healthz")).status_code == 200
