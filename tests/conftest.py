"""Shared fixtures: one embedded server per kind per session, a fresh namespace per test.

Set OUTBOX_TEST_MONGO_URI, OUTBOX_TEST_KAFKA_BOOTSTRAP and OUTBOX_TEST_ES_URL to run the
same suite against real servers (compose.yaml) instead of the embedded stand-ins.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from infra.devstack import EmbeddedStack
from infra.settings import (
    ElasticSettings,
    KafkaSettings,
    LogSettings,
    MongoSettings,
    Settings,
)

# No per-example deadline: a loaded 2-core machine makes timing noise, not bugs. In CI the
# examples are derandomized so a landing never depends on the draw; locally they vary.
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

pytest_plugins = [
    "tests.fixtures.auth",
    "tests.fixtures.api",
    "tests.fixtures.relay",
    "tests.fixtures.indexer",
    "tests.fixtures.pipeline",
]


@dataclass(frozen=True)
class ServerUrls:
    mongo_uri: str
    kafka_bootstrap: str
    es_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerUrls]:
    """The three servers: from the environment when set, else embedded on free ports."""
    external = (
        os.environ.get("OUTBOX_TEST_MONGO_URI"),
        os.environ.get("OUTBOX_TEST_KAFKA_BOOTSTRAP"),
        os.environ.get("OUTBOX_TEST_ES_URL"),
    )
    if all(external):
        yield ServerUrls(*external)  # type: ignore[arg-type]
        return
    stack = EmbeddedStack.on_free_ports(tmp_path_factory.mktemp("stack"), persistent=False)
    stack.start()
    try:
        yield ServerUrls(stack.mongo_uri, stack.kafka_bootstrap, stack.es_url)
    finally:
        stack.stop()


def settings_for(urls: ServerUrls, **overrides: object) -> Settings:
    """Settings isolated from every other test: own database, topics and indices."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    return Settings(
        env="test",
        mongo=MongoSettings(uri=urls.mongo_uri, database=ns),
        kafka=KafkaSettings(bootstrap=urls.kafka_bootstrap, namespace=ns, partitions=3),
        es=ElasticSettings(url=urls.es_url, index_prefix=f"{ns}-"),
        log=LogSettings(level="debug", format="console"),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(servers: ServerUrls) -> Settings:
    return settings_for(servers)


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A stack of its own for tests that stop, kill or starve a server."""
    stack = EmbeddedStack.on_free_ports(tmp_path / "stack")
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
