"""compose.yaml runs the real servers with authentication and the four services, wired the
way the code reads it, with credentials only in mounted secret files.

No Docker engine here: these checks read the file, generate the secret files with the
project's own script, and hold both against the project's settings, commands and probes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from deploy.compose_secrets import KAFKA_APP_USER, MONGO_APP_USER, generate
from infra.settings import DEV_TOKEN_SECRET, KafkaSettings, Settings, settings_to_env
from outbox_cli.main import app
from tests.unit.deploy.deploy_files import (
    APP_SERVICES,
    COMPOSE_FILE,
    CREDENTIALS,
    DOCKERFILE,
    INFRA_SERVICES,
    PORTS_OVERRIDE_FILE,
    ROOT,
    command_option,
    depends_on,
    dockerfile_stages,
    environment,
    healthcheck_command,
    host_port,
    interpolate,
    kafka_listeners,
    load_yaml,
    mongo_uri_parts,
    mounted_secrets,
    published_ports,
    setting_names,
)

# What each service talks to, so what it must wait for.
NEEDS = {
    "auth": {"mongo"},  # users live in MongoDB
    "api": {"mongo", "elasticsearch", "es-setup", "auth"},  # writes, search, verification
    "relay": {"mongo", "kafka"},  # change stream → Kafka transactions
    "indexer": {"kafka", "elasticsearch", "es-setup"},  # consumer group → bulk indexing
}
SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|TOKEN(?!_TTL)|_KEY\b|CREDENTIAL|MONGO_URI", re.IGNORECASE
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def secret_files(
    compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Top-level secret name → the file deploy/compose_secrets.py wrote for it."""
    directory = tmp_path_factory.mktemp("compose") / "secrets"
    written = generate(directory)
    files = {}
    for name, spec in compose["secrets"].items():
        path = Path(spec["file"])
        assert path.parent == Path("secrets"), f"{name}: not under ./secrets"
        files[name] = written[path.name]
    return files


def app_env(services: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    """A service's environment values as the container sees them."""
    return {key: interpolate(value, {}) for key, value in environment(services[name]).items()}


def secret_values(
    services: dict[str, dict[str, Any]], name: str, secret_files: dict[str, Path]
) -> dict[str, str]:
    """What a service finds in /run/secrets, by file name."""
    return {
        target: secret_files[source].read_text().strip()
        for target, source in mounted_secrets(services[name]).items()
    }


def setting(env: dict[str, str], name: str) -> str:
    """The value a service gets: the compose value, else the image's, else the default."""
    default = settings_to_env(Settings(_env_file=None))  # type: ignore[call-arg]
    if name in env:
        return env[name]
    return image_env().get(name, default.get(name, ""))


def image_env() -> dict[str, str]:
    return dockerfile_stages(DOCKERFILE.read_text())[-1].env()


@pytest.fixture
def container_settings(
    services: dict[str, dict[str, Any]],
    secret_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Any:
    """`build(name)`: the Settings a service builds in its container, from the image's and
    compose's environment and its /run/secrets (a directory of the mounted files)."""

    def build(name: str) -> Settings:
        for key in [key for key in os.environ if key.startswith("OUTBOX_")]:
            monkeypatch.delenv(key)
        run_secrets = tmp_path / name / "run-secrets"
        run_secrets.mkdir(parents=True)
        for target, value in secret_values(services, name, secret_files).items():
            (run_secrets / target).write_text(value)
        for key, value in {**image_env(), **app_env(services, name)}.items():
            if key.startswith("OUTBOX_"):
                monkeypatch.setenv(key, value)
        monkeypatch.setenv("OUTBOX_SECRETS_DIR", str(run_secrets))
        return Settings(_env_file=None)  # type: ignore[call-arg]

    return build


def test_compose_is_a_compose_spec_file_with_every_service(compose: dict[str, Any]) -> None:
    """Compose Specification (no obsolete `version:`), with the servers and the services."""
    assert "version" not in compose
    assert set(INFRA_SERVICES) | set(APP_SERVICES) <= set(compose["services"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_outbox_variable_and_secret_file_is_a_real_setting(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """A misspelt OUTBOX_* name would be ignored silently (extra="ignore"); none is, neither
    in the environment nor as a mounted secret's file name."""
    outbox_vars = {key for key in environment(services[name]) if key.startswith("OUTBOX_")}
    assert outbox_vars, f"{name} sets no OUTBOX_* variable"
    assert outbox_vars - setting_names() == set()
    assert set(mounted_secrets(services[name])) - setting_names() == set()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_container_builds_the_intended_prod_settings(
    services: dict[str, dict[str, Any]],
    secret_files: dict[str, Path],
    container_settings: Any,
    name: str,
) -> None:
    """Environment and secret files parse (types, literals) into exactly what compose says,
    in prod; the auth service's signing secret passes the prod rule."""
    built = container_settings(name)
    assert built.env == "prod"
    rebuilt = settings_to_env(built)
    expected = {**app_env(services, name), **secret_values(services, name, secret_files)}
    assert {key: rebuilt[key] for key in expected} == expected
    if name == "auth":
        built.auth.signing_secret(built.env)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_credentials_come_only_from_secret_files(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """No password, URI with a password or signing key in `environment:` (visible in
    `docker inspect`); each service mounts exactly the credentials it uses, and only auth
    gets the token signing secret."""
    for key in environment(services[name]):
        assert not SECRET_NAME.search(key), f"{name}.{key} belongs in a secret file"
    assert set(mounted_secrets(services[name])) == CREDENTIALS[name]


def test_no_secret_is_written_in_compose(compose: dict[str, Any]) -> None:
    """Every top-level secret is a file under ./secrets (git- and docker-ignored)."""
    for name, spec in compose["secrets"].items():
        assert set(spec) == {"file"}, name
        assert spec["file"].startswith("./secrets/"), name
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_real_outbox_commands_from_one_hardened_image(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """`command:` is the service's own `outbox` subcommand; all four share one build, run
    read-only without capabilities, with a memory limit."""
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    service = services[name]
    assert service["command"] == [name]
    assert name in commands
    assert service["build"] == "."
    assert {services[other]["image"] for other in APP_SERVICES} == {service["image"]}
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["mem_limit"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_services_wait_for_healthy_dependencies(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """Each service starts only once the servers it uses are healthy (and the one-shot
    Elasticsearch user set-up has finished), not just started."""
    deps = depends_on(services[name])
    assert NEEDS[name] <= set(deps)
    for dep in NEEDS[name]:
        expected = "service_completed_successfully" if dep == "es-setup" else "service_healthy"
        assert deps[dep] == expected, (name, dep)


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    """`service_healthy` on a service without a healthcheck would never be satisfied."""
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot
        assert healthcheck_command(service)[0] in {"CMD", "CMD-SHELL"}, name
        for dep, condition in depends_on(service).items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has none"


def test_mongo_is_an_authenticated_replica_set_the_uri_names(
    services: dict[str, dict[str, Any]], secret_files: dict[str, Path]
) -> None:
    """The URI's replicaSet, host and user are the set mongod runs, the member it initiates
    and the user the init script creates; mongod runs with a keyFile (so with auth)."""
    mongo = services["mongo"]
    repl_set = command_option(mongo["command"], "--replSet")
    assert repl_set
    assert "--bind_ip_all" in mongo["command"]
    keyfile = command_option(mongo["command"], "--keyFile")
    assert keyfile
    assert f"/run/secrets/mongo_keyfile {keyfile}" in mongo["entrypoint"][2]
    port = int(command_option(mongo["command"], "--port") or 27017)
    init_script = healthcheck_command(mongo)[-1]
    assert f"_id:'{repl_set}'" in init_script
    assert f"host:'mongo:{port}'" in init_script
    assert "MONGO_INITDB_ROOT_PASSWORD_FILE" in environment(mongo)
    init_js = (ROOT / "deploy" / "compose" / "mongo-init.js").read_text()
    assert any(
        v.endswith(":/docker-entrypoint-initdb.d/mongo-init.js:ro") for v in mongo["volumes"]
    )
    for name in ("auth", "api", "relay"):
        uri = secret_values(services, name, secret_files)["OUTBOX_MONGO_URI"]
        hosts, options = mongo_uri_parts(uri.replace(uri.split("//")[1].split("@")[0] + "@", ""))
        assert hosts == [("mongo", port)], name
        assert options.get("replicaSet") == repl_set, name
        assert options.get("authSource") == "admin", name
        assert "directConnection" not in options, name
        user, password = uri.split("//")[1].split("@")[0].split(":")
        assert user == MONGO_APP_USER
        assert f'user: "{user}"' in init_js
        assert password == secret_files["mongo_outbox_password"].read_text()
    assert len(secret_files["mongo_keyfile"].read_text()) <= 1024  # mongod's keyFile limit


def test_kafka_clients_authenticate_on_an_advertised_in_network_listener(
    services: dict[str, dict[str, Any]], secret_files: dict[str, Path]
) -> None:
    """Clients reach kafka:9092 with SASL, the broker advertises exactly that address back,
    and the JAAS file holds the user and password the services send."""
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
    jaas = secret_files["kafka_server_jaas"].read_text()
    assert "-Djava.security.auth.login.config=/run/secrets/kafka_server_jaas" in kafka["KAFKA_OPTS"]
    assert "kafka_server_jaas" in mounted_secrets(services["kafka"])
    for name in ("api", "relay", "indexer"):
        env = app_env(services, name)
        host, port = host_port(setting(env, "OUTBOX_KAFKA_BOOTSTRAP"))
        matching = [a for a in advertised.values() if (a.host, a.port) == (host, port)]
        assert host == "kafka", name
        assert matching, f"{name}: {host}:{port} is not an advertised listener"
        assert protocols[matching[0].name] == setting(env, "OUTBOX_KAFKA_SECURITY_PROTOCOL")
        assert setting(env, "OUTBOX_KAFKA_SASL_MECHANISM") in kafka[
            "KAFKA_SASL_ENABLED_MECHANISMS"
        ].split(",")
        assert setting(env, "OUTBOX_KAFKA_SASL_USERNAME") == KAFKA_APP_USER
        password = secret_files["kafka_password"].read_text()
        assert f'user_{KAFKA_APP_USER}="{password}";' in jaas


def test_no_unauthenticated_kafka_listener_is_reachable_from_outside_the_container(
    services: dict[str, dict[str, Any]],
) -> None:
    """PLAINTEXT only for the controller (never advertised) and the broker's own listener,
    bound to the container's loopback (also the inter-broker one and the healthcheck's)."""
    kafka = environment(services["kafka"])
    listeners = kafka_listeners(kafka["KAFKA_LISTENERS"])
    protocols = dict(
        item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    for name, listener in listeners.items():
        if protocols[name] == "PLAINTEXT" and name != controller:
            assert listener.host == "127.0.0.1", name
    broker = listeners[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert broker.host == "127.0.0.1"
    probe = healthcheck_command(services["kafka"])
    assert f"127.0.0.1:{broker.port}" in probe


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


def test_elasticsearch_has_security_on_and_services_use_their_own_user(
    services: dict[str, dict[str, Any]], secret_files: dict[str, Path]
) -> None:
    """http://elasticsearch:9200 with the `outbox` user es-setup creates (never `elastic`),
    its password from the same secret file."""
    es = environment(services["elasticsearch"])
    assert es["discovery.type"] == "single-node"
    assert es["xpack.security.enabled"] == "true"
    assert es["ELASTIC_PASSWORD_FILE"] == "/run/secrets/elastic_password"
    tls = es.get("xpack.security.http.ssl.enabled") == "true"
    setup = services["es-setup"]
    script = (ROOT / "deploy" / "compose" / "es-setup.sh").read_text()
    assert mounted_secrets(setup) == {
        "elastic_password": "elastic_password",
        "es_outbox_password": "es_outbox_password",
    }
    for name in ("api", "indexer"):
        env = app_env(services, name)
        assert setting(env, "OUTBOX_ES_URL") == f"{'https' if tls else 'http'}://elasticsearch:9200"
        username = setting(env, "OUTBOX_ES_USERNAME")
        assert username != "elastic"
        assert f"/_security/user/{username} " in script
        assert mounted_secrets(services[name])["OUTBOX_ES_PASSWORD"] == "es_outbox_password"


def test_auth_target_is_where_auth_listens(services: dict[str, dict[str, Any]]) -> None:
    """The gRPC server binds all interfaces on the port every client dials."""
    auth = app_env(services, "auth")
    assert setting(auth, "OUTBOX_AUTH_HOST") == "0.0.0.0"
    port = int(setting(auth, "OUTBOX_AUTH_PORT"))
    for name in APP_SERVICES:
        assert host_port(setting(app_env(services, name), "OUTBOX_AUTH_TARGET")) == ("auth", port)


def test_only_the_api_is_published_and_only_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    """The API answers on the host's loopback at its own port; nothing else is published,
    so `--scale relay=2` / `--scale indexer=3` cannot collide."""
    api = app_env(services, "api")
    assert setting(api, "OUTBOX_API_HOST") == "0.0.0.0"
    port = int(setting(api, "OUTBOX_API_PORT"))
    assert published_ports(services["api"]) == [("127.0.0.1", port, port)]
    for name in ("auth", "relay", "indexer", *INFRA_SERVICES):
        assert not published_ports(services[name]), name


def test_one_relay_by_default(services: dict[str, dict[str, Any]]) -> None:
    """The relay is single-active; a standby is an explicit `--scale relay=2`."""
    replicas = (services["relay"].get("deploy") or {}).get("replicas", 1)
    assert replicas == 1


@pytest.mark.parametrize(
    ("name", "port_setting", "path"),
    [
        ("auth", "OUTBOX_AUTH_METRICS_PORT", "/readyz"),
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


def test_no_deploy_file_contains_the_dev_secret() -> None:
    paths = [COMPOSE_FILE, DOCKERFILE, *(p for p in ROOT.glob("deploy/**/*") if p.is_file())]
    for path in paths:
        assert DEV_TOKEN_SECRET not in path.read_text(), path


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        str(volume).split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes") or []
    }
    named = {source for source in used if not source.startswith((".", "/", "~"))}
    assert named <= set(compose.get("volumes") or {})
    for source in used - named:
        assert (ROOT / source).exists(), source


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


def test_the_secrets_script_keeps_existing_files_and_hides_the_directory(tmp_path: Path) -> None:
    """Re-running never changes a password a running stack uses; other users cannot look."""
    first = {name: path.read_text() for name, path in generate(tmp_path / "s").items()}
    again = {name: path.read_text() for name, path in generate(tmp_path / "s").items()}
    assert first == again
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert len(first["token_secret"].encode()) >= 32
    assert len(set(first.values())) == len(first)
