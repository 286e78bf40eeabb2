"""Shared fixtures: one embedded server per kind per session, a fresh namespace per test.

Set OUTBOX_TEST_MONGO_URI, OUTBOX_TEST_KAFKA_BOOTSTRAP and OUTBOX_TEST_ES_URL to run the
same suite against real servers (compose.yaml) instead of the embedded stand-ins. The
session's servers are the pytest plugin's `outbox_servers` (outbox_pipeline/testing.py,
loaded through its entry point), the fixture users' own tests get too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from infra.devstack import EmbeddedStack
from infra.settings import LogSettings, Settings
from outbox_pipeline.testing import OutboxServers, isolated_settings

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


# The servers and the per-test isolation come from the pytest plugin users get
# (outbox_pipeline.testing): one copy of "embedded on free ports, or OUTBOX_TEST_*".
ServerUrls = OutboxServers


@pytest.fixture(scope="session")
def servers(outbox_servers: OutboxServers) -> OutboxServers:
    """The three servers: from the environment when set, else embedded on free ports."""
    return outbox_servers


def settings_for(urls: ServerUrls, **overrides: object) -> Settings:
    """Settings isolated from every other test: own database, topics and indices."""
    return isolated_settings(urls, log=LogSettings(level="debug", format="console"), **overrides)


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
