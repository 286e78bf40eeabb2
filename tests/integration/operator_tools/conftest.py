"""The whole pipeline for the operator tool tests: API (in-process), relay and indexer tasks.

(Kept here rather than in tests/fixtures/ until `tests.fixtures.operator` is registered in
the root conftest's `pytest_plugins`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from elasticsearch import AsyncElasticsearch, NotFoundError

from infra.elastic import elastic_client
from infra.settings import Settings, settings_to_env
from operator_tools.backends import Backends, open_backends
from operator_tools.status import status
from outbox_relay.service import serve as serve_relay
from tests.fixtures.api import ApiHandle
from tests.fixtures.indexer import RunningIndexer, indexer_settings, start_indexer, wait_until
from tests.fixtures.relay import fast_relay

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)


@dataclass
class Pipeline:
    """API + relay + indexer on one test's database, topics and indices."""

    api: ApiHandle
    settings: Settings
    es: AsyncElasticsearch
    backends: Backends
    headers: dict[str, str] = field(default_factory=dict)
    relay: asyncio.Task[None] | None = None
    indexer: RunningIndexer | None = None

    # --- stages ---------------------------------------------------------------------------

    def start_relay(self) -> None:
        assert self.relay is None
        self.relay = asyncio.create_task(serve_relay(self.settings), name="relay-under-test")

    async def stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.cancel()
            await asyncio.gather(self.relay, return_exceptions=True)
            self.relay = None

    def start_indexer(self) -> None:
        assert self.indexer is None
        self.indexer = start_indexer(self.settings)

    async def stop_indexer(self) -> None:
        if self.indexer is not None:
            await self.indexer.stop()
            self.indexer = None

    async def start_stages(self) -> None:
        """Relay first; the indexer once the relay has published everything written so far.

        The indexer then subscribes with the event topics already there, instead of
        finding them at its next metadata refresh (seconds later).
        """
        self.start_relay()

        async def published() -> bool:
            return (await status(self.backends)).backlog == 0

        await wait_until(published, timeout_s=20, interval_s=0.1, what="relay caught up")
        self.start_indexer()

    # --- writes through the API -----------------------------------------------------------

    async def put(self, collection: str, doc_id: str, body: dict[str, Any]) -> int:
        r = await self.api.client.put(
            f"/v1/collections/{collection}/documents/{doc_id}", json=body, headers=self.headers
        )
        assert r.status_code in (200, 201), r.text
        return int(r.json()["version"])

    async def delete(self, collection: str, doc_id: str) -> None:
        r = await self.api.client.delete(
            f"/v1/collections/{collection}/documents/{doc_id}", headers=self.headers
        )
        assert r.status_code == 204, r.text

    # --- observing --------------------------------------------------------------------------

    async def mongo_state(self, collection: str) -> dict[str, tuple[int, bool]]:
        """id → (version, deleted) as MongoDB holds it."""
        return {
            raw["_id"]: (raw["version"], bool(raw.get("deleted")))
            async for raw in self.api.db[collection].find({}, {"version": 1, "deleted": 1})
        }

    async def es_state(self, collection: str) -> dict[str, tuple[int, bool]]:
        """id → (version, deleted) as the index behind the alias holds it."""
        alias = self.settings.es.alias_for(collection)
        try:
            await self.es.indices.refresh(index=alias)
            response = await self.es.search(
                index=alias, size=10_000, version=True, query={"match_all": {}}
            )
        except NotFoundError:
            return {}
        return {
            h["_id"]: (h["_version"], bool(h["_source"]["deleted"]))
            for h in response["hits"]["hits"]
        }

    async def settled(self, collection: str, timeout_s: float = 30.0) -> None:
        """Wait until Elasticsearch holds every MongoDB document at its version."""

        async def same() -> bool:
            mongo = await self.mongo_state(collection)
            index = await self.es_state(collection)
            live_m = {i: v for i, (v, d) in mongo.items() if not d}
            live_i = {i: v for i, (v, d) in index.items() if not d}
            return live_m == live_i and all(
                index.get(i, (0, False))[0] == v for i, (v, _) in mongo.items()
            )

        await wait_until(same, timeout_s=timeout_s, interval_s=0.2, what=f"{collection} settled")

    # --- the CLI as operators run it ------------------------------------------------------

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """`outbox <args>` in a subprocess with this pipeline's settings."""
        child_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")},
            **settings_to_env(self.settings),
            "OUTBOX_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox_cli",
            *args,
            cwd=ROOT,
            env=child_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(), err.decode())


def pipeline_settings(base: Settings, **es: Any) -> Settings:
    settings = fast_relay(indexer_settings(base))
    if es:
        settings = settings.model_copy(update={"es": settings.es.model_copy(update=es)})
    return settings


@contextlib.asynccontextmanager
async def open_pipeline(api: ApiHandle, settings: Settings) -> AsyncIterator[Pipeline]:
    es = elastic_client(settings.es)
    async with open_backends(settings) as backends:
        pipeline = Pipeline(api=api, settings=settings, es=es, backends=backends)
        pipeline.headers = await api.writer_headers()
        try:
            yield pipeline
        finally:
            await pipeline.stop_relay()
            await pipeline.stop_indexer()
            await es.close()


@pytest.fixture
async def pipeline(api_client: ApiHandle) -> AsyncIterator[Pipeline]:
    """The pipeline with nothing running yet: start the relay and indexer as the test needs."""
    async with open_pipeline(api_client, pipeline_settings(api_client.settings)) as p:
        yield p
