"""A pytest plugin for your own integration tests against outbox-pipeline.

Installed with the package (`pip install 'outbox-pipeline[testing]'`) and registered as a
pytest plugin (entry point `pytest11`), so its fixtures are there in every test session
without a conftest line:

- `outbox_servers` (session): MongoDB, Kafka and Elasticsearch. The embedded stand-ins on
  free ports (the same `infra.devstack` code `outbox dev` uses), or the servers named by
  `OUTBOX_TEST_MONGO_URI`, `OUTBOX_TEST_KAFKA_BOOTSTRAP` and `OUTBOX_TEST_ES_URL`.
- `outbox_stack` (session): those servers plus the four services (auth, api, relay,
  indexer) as child processes on free ports, supervised exactly as `outbox dev` runs them,
  on a database, Kafka namespace and index prefix of their own; a `writer` and an `admin`
  user exist. `outbox_stack.api_url` is where your service should send its requests.
- `outbox_client`: an `httpx.Client` on the API with a writer's bearer token.
- `wait_searchable(token_or_response, collection=None)`: returns once the write that
  returned that consistency token (`token` / `Outbox-Token`) is searchable, through the
  search API's own `after=` read-your-writes wait, never a sleep.

    def test_a_book_is_found_by_title(outbox_client, wait_searchable):
        r = outbox_client.post("/v1/collections/books/documents", json={"title": "Dune"})
        wait_searchable(r)
        hits = outbox_client.get("/v1/collections/books/search", params={"q": "dune"})
        assert [h["document"]["title"] for h in hits.json()["hits"]] == ["Dune"]

Nothing heavy is imported until a fixture is used, so the plugin costs nothing in test
sessions that do not use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from infra.settings import (
    ElasticSettings,
    IndexerSettings,
    KafkaSettings,
    LogSettings,
    MongoSettings,
    Settings,
    settings_to_env,
)

if TYPE_CHECKING:
    import httpx

    from outbox_cli.supervisor import ServiceSpec

__all__ = [
    "NotSearchableError",
    "OutboxServers",
    "OutboxStack",
    "WaitSearchable",
    "await_searchable",
    "isolated_settings",
    "running_pipeline",
    "wait_searchable",
]

TOKEN_HEADER = "Outbox-Token"  # noqa: S105 - a header name, not a secret
NOT_YET_INDEXED = "not-yet-indexed"
MAX_WAIT_MS = 10_000  # the search API's largest `wait_ms`
DEFAULT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
_COLLECTION_PATH = re.compile(r"^/v1/collections/([^/]+)/")


class WaitSearchable(Protocol):
    def __call__(
        self,
        written: str | httpx.Response,
        collection: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None: ...


class NotSearchableError(AssertionError):
    """The write did not become searchable in time, or search refused the wait."""


@dataclass(frozen=True)
class OutboxServers:
    """Where MongoDB, Kafka and Elasticsearch answer."""

    mongo_uri: str
    kafka_bootstrap: str
    es_url: str


def isolated_settings(servers: OutboxServers, **overrides: Any) -> Settings:
    """Settings on `servers` that share nothing with anyone else's: a database, Kafka
    namespace (topics, relay transactional id), index prefix and consumer group of their own."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    values: dict[str, Any] = {
        "env": "test",
        "mongo": MongoSettings(uri=servers.mongo_uri, database=ns),
        "kafka": KafkaSettings(bootstrap=servers.kafka_bootstrap, namespace=ns, partitions=3),
        "es": ElasticSettings(url=servers.es_url, index_prefix=f"{ns}-"),
        "indexer": IndexerSettings(group_id=f"{ns}-indexer"),
        **overrides,
    }
    return Settings(**values)


# --- read your writes ------------------------------------------------------------------


def _token_and_collection(written: str | httpx.Response, collection: str | None) -> tuple[str, str]:
    if isinstance(written, str):
        token = written
    else:
        token = written.headers.get(TOKEN_HEADER, "")
        if not token:
            raise NotSearchableError(
                f"the response ({written.status_code}) carries no {TOKEN_HEADER}: "
                "only a 2xx write returns one"
            )
        if collection is None:
            m = _COLLECTION_PATH.match(written.request.url.path)
            collection = m.group(1) if m else None
    if collection is None:
        raise TypeError("wait_searchable(token, collection): name the write's collection")
    return token, collection


def _search_call(token: str, collection: str, wait_ms: int) -> tuple[str, dict[str, str]]:
    return (
        f"/v1/collections/{collection}/search",
        {"after": token, "wait_ms": str(wait_ms), "size": "1"},
    )


def _answered(response: httpx.Response) -> bool:
    """True once searchable; False for 503 not-yet-indexed; anything else is an error."""
    if response.status_code == 200:
        return True
    if response.status_code == 503 and str(response.json().get("type", "")).endswith(
        NOT_YET_INDEXED
    ):
        return False
    raise NotSearchableError(
        f"search with after= answered {response.status_code}: {response.text[:500]}"
    )


def _wait_ms(deadline: float) -> int:
    return max(0, min(MAX_WAIT_MS, int((deadline - time.monotonic()) * 1000)))


def wait_searchable(
    client: httpx.Client,
    written: str | httpx.Response,
    collection: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Return once the write behind `written` (its consistency token, or the write's
    response) is searchable; `NotSearchableError` after `timeout_s`."""
    token, collection = _token_and_collection(written, collection)
    deadline = time.monotonic() + timeout_s
    while True:
        path, params = _search_call(token, collection, _wait_ms(deadline))
        if _answered(client.get(path, params=params)):
            return
        if time.monotonic() >= deadline:
            raise NotSearchableError(f"not searchable within {timeout_s:.0f}s: {collection}")


async def await_searchable(
    client: httpx.AsyncClient,
    written: str | httpx.Response,
    collection: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """`wait_searchable` for async tests."""
    token, collection = _token_and_collection(written, collection)
    deadline = time.monotonic() + timeout_s
    while True:
        path, params = _search_call(token, collection, _wait_ms(deadline))
        if _answered(await client.get(path, params=params)):
            return
        if time.monotonic() >= deadline:
            raise NotSearchableError(f"not searchable within {timeout_s:.0f}s: {collection}")


# --- the running pipeline -----------------------------------------------------------------


@dataclass
class OutboxStack:
    """The services on `settings`; `users` maps a role to its (username, password)."""

    settings: Settings
    users: dict[str, tuple[str, str]]
    _tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api.host}:{self.settings.api.port}"

    @property
    def env(self) -> dict[str, str]:
        """The `OUTBOX_*` variables of this stack (to run `outbox` or your service with)."""
        return settings_to_env(self.settings)

    def token(self, role: str = "writer") -> str:
        """A bearer token of the stack's `role` user (`writer` or `admin`), from the API."""
        import httpx  # noqa: PLC0415 - only when used: the plugin loads in every session

        if role not in self._tokens:
            username, password = self.users[role]
            r = httpx.post(
                f"{self.api_url}/v1/auth/token",
                json={"username": username, "password": password},
                timeout=30,
            )
            r.raise_for_status()
            self._tokens[role] = str(r.json()["access_token"])
        return self._tokens[role]

    def headers(self, role: str = "writer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}

    def client(self, role: str = "writer", **kwargs: Any) -> httpx.Client:
        """An `httpx.Client` on the API with `role`'s token (close it, or use `with`)."""
        import httpx  # noqa: PLC0415

        return httpx.Client(base_url=self.api_url, headers=self.headers(role), timeout=30, **kwargs)

    def async_client(self, role: str = "writer", **kwargs: Any) -> httpx.AsyncClient:
        import httpx  # noqa: PLC0415

        return httpx.AsyncClient(
            base_url=self.api_url, headers=self.headers(role), timeout=30, **kwargs
        )

    def wait_searchable(
        self,
        written: str | httpx.Response,
        collection: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        with self.client() as client:
            wait_searchable(client, written, collection, timeout_s=timeout_s)

    def outbox(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the `outbox` CLI against this stack (e.g. `outbox("status", "--json")`)."""
        return subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "outbox_cli", *args],
            env={**os.environ, **self.env, "OUTBOX_LOG_LEVEL": "warning"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


class _ServiceHost:
    """The `outbox dev` supervisor on an event loop of its own, in a thread: it keeps
    restarting crashed services whatever the tests' own loops do."""

    def __init__(self, specs: list[ServiceSpec]) -> None:
        self._specs = specs
        self._thread = threading.Thread(target=self._main, name="outbox-services", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from outbox_cli.supervisor import ServiceStartError, Supervisor  # noqa: PLC0415

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        supervisor = Supervisor()
        try:
            await supervisor.start(self._specs)
        except (ServiceStartError, OSError) as e:  # raised again in the fixture
            self._error = e
            await supervisor.stop()
            self._started.set()
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await supervisor.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)


def _wait_ready(urls: list[str], timeout_s: float) -> None:
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    for url in urls:
        last = "no answer"
        while True:
            try:
                r = httpx.get(url, timeout=2)
                if r.status_code == 200:
                    break
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.TransportError as e:
                last = type(e).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s: {last}")
            time.sleep(0.1)


@contextlib.contextmanager
def running_pipeline(servers: OutboxServers, **overrides: Any) -> Iterator[OutboxStack]:
    """auth, api, relay and indexer on `servers`, as `outbox dev` runs them; stopped after."""
    from outbox_cli.dev import create_user, dev_settings, service_specs  # noqa: PLC0415

    base = isolated_settings(servers, log=LogSettings(level="warning"), **overrides)
    settings = dev_settings(base, servers, free_ports=True)
    host = _ServiceHost(service_specs(settings))
    host.start()
    try:
        _wait_ready(
            [
                f"http://{settings.relay.metrics_host}:{settings.relay.metrics_port}/readyz",
                f"http://{settings.indexer.metrics_host}:{settings.indexer.metrics_port}/readyz",
            ],
            READY_TIMEOUT_S,
        )
        users: dict[str, tuple[str, str]] = {}
        for role in ("writer", "admin"):
            username, password = f"{role}-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
            error = create_user(settings, username, password, role=role)
            if error is not None:
                raise RuntimeError(f"could not create the {role} user: {error}")
            users[role] = (username, password)
        yield OutboxStack(settings=settings, users=users)
    finally:
        host.stop()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def outbox_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutboxServers]:
    """The three servers: from `OUTBOX_TEST_*` when set, else embedded on free ports."""
    external = (
        os.environ.get("OUTBOX_TEST_MONGO_URI"),
        os.environ.get("OUTBOX_TEST_KAFKA_BOOTSTRAP"),
        os.environ.get("OUTBOX_TEST_ES_URL"),
    )
    if all(external):
        mongo, kafka, es = (str(value) for value in external)
        yield OutboxServers(mongo, kafka, es)
        return
    from infra.devstack import EmbeddedStack  # noqa: PLC0415

    stack = EmbeddedStack.on_free_ports(tmp_path_factory.mktemp("outbox-servers"), persistent=False)
    stack.start()
    try:
        yield OutboxServers(stack.mongo_uri, stack.kafka_bootstrap, stack.es_url)
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def outbox_stack(outbox_servers: OutboxServers) -> Iterator[OutboxStack]:
    """The whole pipeline, once per test session, on a namespace of its own."""
    with running_pipeline(outbox_servers) as stack:
        yield stack


@pytest.fixture
def outbox_client(outbox_stack: OutboxStack) -> Iterator[httpx.Client]:
    """An `httpx.Client` on the API (relative URLs) with a writer's bearer token."""
    with outbox_stack.client("writer") as client:
        yield client


@pytest.fixture(name="wait_searchable")
def wait_searchable_fixture(outbox_stack: OutboxStack) -> WaitSearchable:
    """`wait_searchable(token_or_response, collection=None, *, timeout_s=30)` on the stack."""
    return outbox_stack.wait_searchable
