"""compose.yaml runs the real servers and the four services, wired the way the code reads it.

No Docker engine here: these checks read the file and hold it against the project's own
settings, commands and probes.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import typer.main

from infra.settings import DEV_TOKEN_SECRET, KafkaSettings, Settings, settings_to_env
from outbox_cli.main import app
from tests.unit.deploy.deploy_files import (
    APP_SERVICES,
    COMPOSE_FILE,
    DOCKERFILE,
    ES_SECURITY_OVERRIDE_FILE,
    INFRA_SERVICES,
    PORTS_OVERRIDE_FILE,
    ROOT,
    MissingVariableError,
    command_option,
    depends_on,
    dockerfile_stages,
    environment,
    healthcheck_command,
    host_port,
    interpolate,
    interpolations,
    kafka_listeners,
    load_yaml,
    merge_compose,
    mongo_uri_parts,
    published_ports,
    setting_names,
)

# What each service talks to, so what it must wait for.
NEEDS = {
    "auth": {"mongo"},  # users live in MongoDB
    "api": {"mongo", "elasticsearch", "auth"},  # writes, search, token verification
    "relay": {"mongo", "kafka"},  # change stream → Kafka transactions
    "indexer": {"kafka", "elasticsearch"},  # consumer group → bulk indexing
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN(?!_TTL)|_KEY\b|CREDENTIAL", re.IGNORECASE)
A_SECRET = "s" * 48
SECRETS = {
    "OUTBOX_AUTH_TOKEN_SECRET": A_SECRET,
    "OUTBOX_API_CONSISTENCY_KEY": "k" * 32,
    "ELASTIC_PASSWORD": "e" * 24,
}


@pytest.fixture(scope="module", params=["compose.yaml", "with deploy/compose.es-security.yaml"])
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    """compose.yaml alone, and with the documented Elasticsearch-security override."""
    base = load_yaml(COMPOSE_FILE)
    if request.param == "compose.yaml":
        return base
    return merge_compose(base, load_yaml(ES_SECURITY_OVERRIDE_FILE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def app_env(services: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    """A service's OUTBOX_* values as the container sees them (the secret supplied)."""
    return {key: interpolate(value, SECRETS) for key, value in environment(services[name]).items()}


def setting(env: dict[str, str], name: str) -> str:
    """The value a service gets: the compose value, else the image's, else the default."""
    default = settings_to_env(Settings(_env_file=None))
    return env.get(name, image_env().get(name, default[name]))


def image_env() -> dict[str, str]:
    return dockerfile_stages(DOCKERFILE.read_text())[-1].env()


def test_compose_is_a_compose_spec_file_with_every_service(compose: dict[str, Any]) -> None:
    """Compose Specification (no obsolete `version:`), with the servers and the services."""
    assert "version" not in compose
    assert set(INFRA_SERVICES) | set(APP_SERVICES) <= set(compose["services"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_outbox_variable_is_a_real_setting(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """A misspelt OUTBOX_* name would be ignored silently (extra="ignore"); none is."""
    outbox_vars = {key for key in environment(services[name]) if key.startswith("OUTBOX_")}
    assert outbox_vars, f"{name} sets no OUTBOX_* variable"
    assert outbox_vars - setting_names() == set()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_compose_environment_builds_the_intended_prod_settings(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value parses (types, literals, the prod secret rule) into what compose says."""
    env = app_env(services, name)
    for key in [key for key in os.environ if key.startswith("OUTBOX_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    built = settings_to_env(Settings(_env_file=None))
    assert built["OUTBOX_ENV"] == "prod"
    assert {key: built[key] for key in env if key.startswith("OUTBOX_")} == {
        key: value for key, value in env.items() if key.startswith("OUTBOX_")
    }


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_real_outbox_commands_from_one_image(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """`command:` is the service's own `outbox` subcommand; all four share one build."""
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    service = services[name]
    assert service["command"] == [name]
    assert name in commands
    assert service["build"] == "."
    assert {services[other]["image"] for other in APP_SERVICES} == {service["image"]}
    assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_services_wait_for_healthy_dependencies(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """Each service starts only once the servers it uses are healthy, not just started."""
    deps = depends_on(services[name])
    assert NEEDS[name] <= set(deps)
    assert {deps[dep] for dep in NEEDS[name]} == {"service_healthy"}


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    """`service_healthy` on a service without a healthcheck would never be satisfied."""
    for name, service in services.items():
        assert healthcheck_command(service)[0] in {"CMD", "CMD-SHELL"}, name
        for dep in depends_on(service):
            assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has none"


def test_mongo_is_a_replica_set_the_uri_names(services: dict[str, dict[str, Any]]) -> None:
    """The URI's replicaSet and host are the set mongod runs and the member it initiates."""
    mongo = services["mongo"]
    repl_set = command_option(mongo["command"], "--replSet")
    assert repl_set
    assert "--bind_ip_all" in mongo["command"]
    port = int(command_option(mongo["command"], "--port") or 27017)
    init_script = healthcheck_command(mongo)[-1]
    assert f"_id:'{repl_set}'" in init_script
    assert f"host:'mongo:{port}'" in init_script
    for name in APP_SERVICES:
        hosts, options = mongo_uri_parts(setting(app_env(services, name), "OUTBOX_MONGO_URI"))
        assert hosts == [("mongo", port)], name
        assert options.get("replicaSet") == repl_set, name
        assert "directConnection" not in options, name


def test_kafka_bootstrap_is_an_advertised_in_network_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    """Clients reach kafka:9092, and the broker advertises exactly that address back."""
    kafka = environment(services["kafka"])
    listeners = kafka_listeners(kafka["KAFKA_LISTENERS"])
    advertised = kafka_listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(
        item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners)
    for listener in advertised.values():
        assert listeners[listener.name].port == listener.port, listener
    for name in APP_SERVICES:
        host, port = host_port(setting(app_env(services, name), "OUTBOX_KAFKA_BOOTSTRAP"))
        matching = [a for a in advertised.values() if (a.host, a.port) == (host, port)]
        assert host == "kafka", name
        assert matching, f"{name}: {host}:{port} is not an advertised listener"
        assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] == matching[0].name


def test_kafka_is_a_single_kraft_node_fit_for_transactions(
    services: dict[str, dict[str, Any]],
) -> None:
    """KRaft combined mode; internal topics with one replica, or transactions never start."""
    kafka = environment(services["kafka"])
    listeners = kafka_listeners(kafka["KAFKA_LISTENERS"])
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
        f"{kafka['KAFKA_NODE_ID']}@kafka:{listeners[controller].port}"
    )
    assert controller not in kafka_listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert kafka[key] == "1", key
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["KAFKA_LOG_DIRS"] in {
        volume.split(":")[1] for volume in services["kafka"]["volumes"]
    }


def test_kafka_accepts_the_largest_record_the_relay_produces(
    services: dict[str, dict[str, Any]],
) -> None:
    """The broker limit is above the relay's (message_max_bytes plus header headroom)."""
    kafka = environment(services["kafka"])
    biggest = KafkaSettings().message_max_bytes + 64 * 1024  # infra.kafka.producer_config
    for name in ("relay", "indexer"):
        configured = int(setting(app_env(services, name), "OUTBOX_KAFKA_MESSAGE_MAX_BYTES"))
        assert configured + 64 * 1024 <= int(kafka["KAFKA_MESSAGE_MAX_BYTES"])
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= biggest


def test_elasticsearch_url_matches_the_server(services: dict[str, dict[str, Any]]) -> None:
    """http(s)://elasticsearch:9200 as the server serves it; credentials iff security is on."""
    es = environment(services["elasticsearch"])
    assert es["discovery.type"] == "single-node"
    security = es.get("xpack.security.enabled", "true") == "true"
    tls = security and es.get("xpack.security.http.ssl.enabled") == "true"
    es_port = int(es.get("http.port", 9200))
    for name in APP_SERVICES:
        env = app_env(services, name)
        url = setting(env, "OUTBOX_ES_URL")
        assert url == f"{'https' if tls else 'http'}://elasticsearch:{es_port}", name
        credentials = {"OUTBOX_ES_USERNAME", "OUTBOX_ES_PASSWORD"} & set(env)
        assert credentials == ({"OUTBOX_ES_USERNAME", "OUTBOX_ES_PASSWORD"} if security else set())


def test_auth_target_is_where_auth_listens(services: dict[str, dict[str, Any]]) -> None:
    """The gRPC server binds all interfaces on the port every client dials."""
    auth = app_env(services, "auth")
    assert setting(auth, "OUTBOX_AUTH_HOST") == "0.0.0.0"
    port = int(setting(auth, "OUTBOX_AUTH_PORT"))
    for name in APP_SERVICES:
        assert host_port(setting(app_env(services, name), "OUTBOX_AUTH_TARGET")) == ("auth", port)


def test_only_the_api_is_published(services: dict[str, dict[str, Any]]) -> None:
    """The API answers on the host at its own port; relay and indexer publish no host port,
    so `--scale relay=2` / `--scale indexer=3` cannot collide."""
    api = app_env(services, "api")
    assert setting(api, "OUTBOX_API_HOST") == "0.0.0.0"
    assert [port for _, _, port in published_ports(services["api"])] == [
        int(setting(api, "OUTBOX_API_PORT"))
    ]
    for name in ("auth", "relay", "indexer", *INFRA_SERVICES):
        assert not published_ports(services[name]), name


def test_one_relay_by_default(services: dict[str, dict[str, Any]]) -> None:
    """The relay is single-active; a standby is an explicit `--scale relay=2`."""
    replicas = (services["relay"].get("deploy") or {}).get("replicas", 1)
    assert replicas == 1


@pytest.mark.parametrize(
    ("name", "port_setting", "path"),
    [
        ("api", "OUTBOX_API_PORT", "/readyz"),
        ("relay", "OUTBOX_RELAY_METRICS_PORT", "/healthz"),
        ("indexer", "OUTBOX_INDEXER_METRICS_PORT", "/healthz"),
    ],
)
def test_http_probes_target_the_port_the_service_serves(
    services: dict[str, dict[str, Any]], name: str, port_setting: str, path: str
) -> None:
    """A probe on the wrong port would mark a working service unhealthy forever."""
    port = setting(app_env(services, name), port_setting)
    assert f"http://127.0.0.1:{port}{path}" in healthcheck_command(services[name])[-1]


def test_grpc_probe_targets_the_auth_port(services: dict[str, dict[str, Any]]) -> None:
    port = setting(app_env(services, "auth"), "OUTBOX_AUTH_PORT")
    probe = healthcheck_command(services["auth"])[-1]
    assert f"'127.0.0.1:{port}'" in probe
    assert "grpc_health.v1" in probe


def test_secrets_must_come_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    """No secret is written in compose: `${VAR:?...}` makes compose refuse to start without it."""
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                found = interpolations(value)
                assert len(found) == 1, f"{name}.{key} is not a variable reference"
                assert found[0].group(0) == value, f"{name}.{key} mixes text into a secret"
                assert found[0]["op"] in {":?", "?"}, f"{name}.{key} has no required check"
                with pytest.raises(MissingVariableError):
                    interpolate(value, {})
                with pytest.raises(MissingVariableError):
                    interpolate(value, {found[0]["name"]: ""})
    for name in APP_SERVICES:
        assert "OUTBOX_AUTH_TOKEN_SECRET" in environment(services[name]), name


def test_no_deploy_file_contains_the_dev_secret() -> None:
    for path in (COMPOSE_FILE, DOCKERFILE, *ROOT.glob("deploy/*")):
        assert DEV_TOKEN_SECRET not in path.read_text(), path


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        str(volume).split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes") or []
    }
    named = {source for source in used if not source.startswith((".", "/", "~"))}
    assert named <= set(compose.get("volumes") or {})


def test_host_ports_override_publishes_the_advertised_kafka_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    """From the host a client dials the advertised EXTERNAL address after bootstrap: the
    published port must be that very host:port, and the servers stay on loopback."""
    override = load_yaml(PORTS_OVERRIDE_FILE)["services"]
    assert set(override) == set(INFRA_SERVICES)
    kafka = environment(services["kafka"])
    listeners = kafka_listeners(kafka["KAFKA_LISTENERS"])
    advertised = kafka_listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    [(ip, host_port_, container_port)] = published_ports(override["kafka"])
    external = [a for a in advertised.values() if a.port == host_port_ and a.host == ip]
    assert external, "the published Kafka port is not an advertised listener"
    assert listeners[external[0].name].port == container_port
    mongo_port = int(command_option(services["mongo"]["command"], "--port") or 27017)
    assert published_ports(override["mongo"]) == [("127.0.0.1", mongo_port, mongo_port)]
    assert published_ports(override["elasticsearch"]) == [("127.0.0.1", 9200, 9200)]
