"""Client libraries and server images agree, on paper: what the locked clients speak is
what the servers compose (and the docs) deploy accept.

- Elasticsearch: the client sends `Accept: application/vnd.elasticsearch+json;
  compatible-with=N`. A server of major M accepts N = M (its own API) and N = M - 1 (REST
  API compatibility), nothing else: ES 8.x refuses a 9.x client's `compatible-with=9`.
  The 8.x client's `compatible-with=8` reaches both 8.x and 9.x servers, which is why
  pyproject.toml pins `elasticsearch<9`. The header is read off the wire, from the real
  client factory, so the test follows whatever the installed client really sends.
- MongoDB: the server's wire version must lie in the driver's supported range.
- Kafka: KRaft 4.x drops the protocol versions of clients older than Kafka 2.1 (KIP-896);
  librdkafka 2.x negotiates per API and speaks the newer ones, transactions included.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import confluent_kafka
import pymongo.common
import pytest
from aiohttp import web
from packaging.requirements import Requirement
from packaging.version import Version

from infra.elastic import elastic_client
from infra.settings import ElasticSettings
from tests.unit.deploy.deploy_files import COMPOSE_FILE, ROOT, environment, load_yaml

# Elasticsearch major → the `compatible-with` values it accepts (its own and the previous).
ES_ACCEPTS = {8: {7, 8}, 9: {8, 9}}
# The server majors docs/deploying.md says the indexer and search work with.
SUPPORTED_ES_MAJORS = {8, 9}
# MongoDB release → its wire version (maxWireVersion in `hello`).
MONGO_WIRE_VERSIONS = {"6.0": 17, "7.0": 21, "8.0": 25}
# Oldest librdkafka we claim for Kafka 4 (the pyproject floor, confluent-kafka 2.6).
MIN_LIBRDKAFKA = Version("2.6.0")


def images() -> dict[str, str]:
    """Every `image:` in compose.yaml and under deploy/ (the Kubernetes manifests): the
    image name without registry and tag → tag."""
    found: dict[str, str] = {}
    for path in [COMPOSE_FILE, *sorted((ROOT / "deploy").rglob("*.yaml"))]:
        for match in re.finditer(r"^\s*image:\s*(\S+)", path.read_text(), re.MULTILINE):
            reference = match[1].split("@")[0]
            name, _, tag = reference.rpartition(":")
            found[name.rsplit("/", 1)[-1]] = tag
    return found


def major(tag: str) -> int:
    return int(tag.split(".", maxsplit=1)[0])


@pytest.fixture
async def captured_accept() -> list[str]:
    """A loopback HTTP server that answers like Elasticsearch's `GET /` and records the
    Accept header of every request."""
    seen: list[str] = []

    async def info(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept", ""))
        return web.json_response(
            {"version": {"number": "8.19.0", "build_flavor": "default"}, "tagline": "x"},
            headers={"X-Elastic-Product": "Elasticsearch"},
        )

    app = web.Application()
    app.router.add_get("/", info)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    es = elastic_client(ElasticSettings(url=f"http://127.0.0.1:{port}"))
    try:
        await es.info()
    finally:
        await es.close()
        await runner.cleanup()
    return seen


async def test_the_es_client_speaks_a_compatibility_header_every_deployed_server_accepts(
    captured_accept: list[str],
) -> None:
    [accept] = captured_accept
    found = re.search(r"compatible-with=(\d+)", accept)
    assert found, accept
    speaks = int(found[1])
    deployed = {major(tag) for name, tag in images().items() if name == "elasticsearch"}
    assert deployed, "no Elasticsearch image found"
    for server_major in deployed | SUPPORTED_ES_MAJORS:
        assert speaks in ES_ACCEPTS[server_major], (
            f"an Elasticsearch {server_major}.x server refuses compatible-with={speaks}"
        )


def test_the_declared_es_client_range_stays_below_9() -> None:
    """The lock could be refreshed tomorrow: the declaration itself must rule out 9.x."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [es] = [
        Requirement(r)
        for r in pyproject["project"]["dependencies"]
        if Requirement(r).name == "elasticsearch"
    ]
    assert "async" in es.extras
    assert not es.specifier.contains("9.0.0")
    assert es.specifier.contains("8.19.3")
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    [locked] = [p["version"] for p in lock["package"] if p["name"] == "elasticsearch"]
    assert Version(locked).major == 8


def test_the_mongo_image_speaks_a_wire_version_the_driver_supports() -> None:
    tag = images()["mongo"]
    release = ".".join(tag.split(".")[:2])
    wire = MONGO_WIRE_VERSIONS[release]
    assert wire >= pymongo.common.MIN_SUPPORTED_WIRE_VERSION
    assert wire <= pymongo.common.MAX_SUPPORTED_WIRE_VERSION
    assert major(tag) == 8


def test_the_kafka_image_is_kraft_4_and_librdkafka_speaks_its_protocol_baseline() -> None:
    tag = images()["kafka"]
    assert major(tag) == 4
    kafka = environment(load_yaml(COMPOSE_FILE)["services"]["kafka"])
    assert "KAFKA_PROCESS_ROLES" in kafka  # KRaft: 4.x has no ZooKeeper mode
    assert not any("ZOOKEEPER" in key for key in kafka)
    librdkafka = Version(confluent_kafka.libversion()[0])
    assert librdkafka >= MIN_LIBRDKAFKA
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [client] = [
        Requirement(r)
        for r in pyproject["project"]["dependencies"]
        if Requirement(r).name == "confluent-kafka"
    ]
    assert not client.specifier.contains("2.5.0"), "the floor must stay at a tested librdkafka"


def test_every_server_image_is_pinned_to_a_release() -> None:
    """No `latest`, no bare major: a re-pull cannot move a server across a major."""
    for name, tag in images().items():
        if name in {"mongo", "kafka", "elasticsearch"}:
            assert re.fullmatch(r"\d+\.\d+(\.\d+)?", tag), f"{name}:{tag}"


def test_the_docs_promise_what_is_tested() -> None:
    text = (ROOT / "docs" / "deploying.md").read_text()
    assert "compatible-with=8" in text
    for tag_name in ("mongo", "kafka", "elasticsearch"):
        assert images()[tag_name] in text, tag_name
    assert Path(ROOT / "uv.lock").exists()
