"""The OpenAPI document says what the server does: schemathesis with every check.

`schemathesis run --checks all` against the running API (real uvicorn, real servers),
once anonymously, once with a writer's token and once with an admin's, each on a database
of its own, with a bounded number of examples per operation.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api.main import serve
from infra.devstack import free_port
from infra.settings import Settings
from tests.fixtures.auth import AuthHandle

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 15


async def _run_schemathesis(url: str, workdir: Path, *args: str) -> tuple[int, str]:
    """The CLI, run in `workdir` (it keeps a cache of examples in its working directory)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261129",
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        *args,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def _serving(settings: Settings) -> tuple[asyncio.Task[None], str]:
    port = free_port()
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"port": port})})
    task = asyncio.create_task(serve(settings))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        deadline = time.monotonic() + 30
        while True:
            assert not task.done(), "serve() exited"
            assert time.monotonic() < deadline, "the API never answered"
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return task, url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


def _own_database(settings: Settings) -> Settings:
    """Documents in a database of their own; users stay where the auth service has them."""
    database = f"{settings.mongo.database}-{uuid.uuid4().hex[:6]}"
    return settings.model_copy(
        update={"mongo": settings.mongo.model_copy(update={"database": database})}
    )


@pytest.mark.parametrize("role", ["anonymous", "writer", "admin"])
async def test_every_operation_behaves_as_the_openapi_document_says(
    auth_service: AuthHandle, role: str, tmp_path: Path
) -> None:
    args: list[str] = []
    if role != "anonymous":
        args += ["--header", f"Authorization: Bearer {await auth_service.token(role)}"]
        # Logging out would revoke the token the rest of the run uses; anonymous covers it.
        args += ["--exclude-path", "/v1/auth/logout"]
    if role == "admin":
        # The writer's run covers the document writes; here the operator routes run on a
        # database nobody writes to, so a repair never waits for an indexer that is absent.
        args += ["--exclude-operation-id-regex", "^(create|replace|patch|delete)_document"]
    task, url = await _serving(_own_database(auth_service.settings))
    try:
        code, output = await _run_schemathesis(url, tmp_path, *args)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (tmp_path / "schemathesis.log").write_text(output)
    assert code == 0, output[-20000:]
