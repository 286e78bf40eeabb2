"""deploy/k8s (a kustomize base and a dev overlay) runs the four services the way the code
reads its settings: every command, setting name, probe, port, Service and secret reference
is checked against the code, and the pods build the intended Settings.

Rendered by tests/unit/deploy/kustomize.py (no kustomize binary here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from infra.settings import Settings, settings_to_env
from outbox_cli.main import app
from tests.unit.deploy.deploy_files import (
    APP_SERVICES,
    COMPOSE_FILE,
    CREDENTIALS,
    DOCKERFILE,
    K8S_DIR,
    MEASURED_RSS_MIB,
    PROBE_PORT_SETTING,
    dockerfile_stages,
    load_yaml,
    setting_names,
)
from tests.unit.deploy.kustomize import Resource, build

KINDS = {"auth": "Deployment", "api": "Deployment", "relay": "Deployment", "indexer": "StatefulSet"}
SECRET_NAME = "outbox-secrets"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


@pytest.fixture(scope="module", params=["base", "overlays/dev"])
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return build(K8S_DIR / request.param)


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def workload(resources: list[Resource], name: str) -> Resource:
    return one(resources, KINDS[name], name)


def container(resources: list[Resource], name: str) -> dict[str, Any]:
    [only] = workload(resources, name)["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def pod_env(resources: list[Resource], name: str, pod_name: str) -> dict[str, str]:
    """The OUTBOX_* environment of a pod: the image's, envFrom ConfigMaps, then env (with
    the downward API's metadata.name resolved to `pod_name`)."""
    spec = container(resources, name)
    env = dockerfile_stages(DOCKERFILE.read_text())[-1].env()
    for source in spec.get("envFrom", []):
        env |= one(resources, "ConfigMap", source["configMapRef"]["name"])["data"]
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, item
            env[item["name"]] = pod_name
    return {k: v for k, v in env.items() if k.startswith("OUTBOX_")}


def secret_items(resources: list[Resource], name: str) -> dict[str, str]:
    """{file name under /run/secrets: Secret key} of the pod's secret volume."""
    pod = workload(resources, name)["spec"]["template"]["spec"]
    spec = container(resources, name)
    [mount] = [m for m in spec["volumeMounts"] if m["mountPath"] == "/run/secrets"]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == SECRET_NAME
    return {item["path"]: item["key"] for item in volume["secret"]["items"]}


def quantity(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", text).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit]


def test_every_service_runs_its_own_outbox_command(rendered: list[Resource]) -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    for name in APP_SERVICES:
        spec = container(rendered, name)
        assert spec["args"] == [name]
        assert name in commands
        assert spec["image"].startswith("outbox-pipeline:")
    assert len({container(rendered, n)["image"] for n in APP_SERVICES}) == 1


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_outbox_name_is_a_real_setting(rendered: list[Resource], name: str) -> None:
    """A misspelt name would be ignored silently; none is, in env, ConfigMap or secret."""
    assert set(pod_env(rendered, name, f"{name}-0")) - setting_names() == set()
    items = secret_items(rendered, name)
    assert all(path == key for path, key in items.items()), "file name = setting name"
    assert set(items) - setting_names() == set()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_pod_gets_exactly_the_credentials_it_uses_by_reference(
    rendered: list[Resource], name: str
) -> None:
    """Secrets are referenced, never defined here, never in env; only auth gets the token
    signing secret."""
    assert set(secret_items(rendered, name)) == CREDENTIALS[name]
    assert not [r for r in rendered if r["kind"] == "Secret"]
    for item in container(rendered, name).get("env", []):
        assert "secretKeyRef" not in str(item), item
    for key in pod_env(rendered, name, f"{name}-0"):
        assert not re.search(r"SECRET|PASSWORD|MONGO_URI", key), key


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_pod_builds_the_intended_prod_settings(
    rendered: list[Resource], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ConfigMap + env + the mounted secret files parse into the settings the manifests
    say, in prod, the services listening where their Service and probes point."""
    env = pod_env(rendered, name, f"{name}-1")
    for key in [key for key in os.environ if key.startswith("OUTBOX_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    for key in secret_items(rendered, name):
        value = "mongodb://outbox:pw@db:27017/?replicaSet=rs0" if key.endswith("URI") else "x" * 48
        (secrets / key).write_text(value)
    monkeypatch.setenv("OUTBOX_SECRETS_DIR", str(secrets))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.env == "prod"
    built = settings_to_env(settings)

    def canonical(value: str) -> str:
        return value.lower() if value.lower() in {"true", "false"} else value

    assert {key: canonical(built[key]) for key in env} == {k: canonical(v) for k, v in env.items()}
    if name == "auth":
        settings.auth.signing_secret(settings.env)
        assert settings.auth.host == "0.0.0.0"
    if name == "indexer":
        assert settings.indexer.instance_id == "indexer-1", "stable id from the pod name"
    if name == "api":
        assert settings.api.host == "0.0.0.0"
    if name in {"relay", "indexer"}:
        assert getattr(settings, name).metrics_host == "0.0.0.0"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_probes_hit_healthz_and_readyz_on_the_port_the_service_serves(
    rendered: list[Resource], name: str
) -> None:
    spec = container(rendered, name)
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    serves = int(pod_env(rendered, name, f"{name}-0")[PROBE_PORT_SETTING[name]])
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in spec:
            assert ports[spec[probe]["httpGet"]["port"]] == serves, probe


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_selects_its_pods_and_names_its_metrics_port(
    rendered: list[Resource], name: str
) -> None:
    """Every Service port reaches a named container port; metrics ports carry the names
    the ServiceMonitor scrapes (`metrics`, or the API's `http`, which serves /metrics)."""
    service = one(rendered, "Service", name)
    pod_labels = workload(rendered, name)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert workload(rendered, name)["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(rendered, name)["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, port
        assert port["port"] == ports[port["targetPort"]], port
    monitor = yaml.safe_load((K8S_DIR / "monitoring" / "servicemonitor.yaml").read_text())
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    assert scraped & {p["name"] for p in service["spec"]["ports"]}, name
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_the_auth_target_is_the_auth_service_grpc_port(rendered: list[Resource]) -> None:
    target = pod_env(rendered, "api", "api-0")["OUTBOX_AUTH_TARGET"]
    host, _, port = target.rpartition(":")
    service = one(rendered, "Service", host)
    [grpc] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    auth_ports = {p["name"]: p["containerPort"] for p in container(rendered, "auth")["ports"]}
    assert auth_ports[grpc["targetPort"]] == int(
        pod_env(rendered, "auth", "auth-0")["OUTBOX_AUTH_PORT"]
    )


def test_the_relay_runs_active_and_standby_under_one_name(rendered: list[Resource]) -> None:
    """Two replicas sharing OUTBOX_RELAY_NAME: one lease, one transactional.id, so one
    active and one fenced standby; a rollout brings the new pod up before an old one goes."""
    relay = workload(rendered, "relay")
    assert relay["spec"]["replicas"] == 2
    assert "OUTBOX_RELAY_NAME" not in {e["name"] for e in container(rendered, "relay")["env"]}
    assert relay["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_indexer_is_a_statefulset_with_a_headless_service(rendered: list[Resource]) -> None:
    indexer = workload(rendered, "indexer")
    service = one(rendered, "Service", indexer["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert indexer["spec"]["replicas"] >= 1


@pytest.mark.parametrize("name", APP_SERVICES)
def test_a_disruption_budget_covers_every_service(rendered: list[Resource], name: str) -> None:
    pdb = one(rendered, "PodDisruptionBudget", name)
    pod_labels = workload(rendered, name)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("name", APP_SERVICES)
def test_resources_follow_the_measured_memory(rendered: list[Resource], name: str) -> None:
    """Requests cover the idle RSS, limits leave at least 1.5x the measured peak; compose's
    mem_limit is the same limit."""
    resources = container(rendered, name)["resources"]
    idle, peak = MEASURED_RSS_MIB[name]
    assert quantity(resources["requests"]["memory"]) >= idle * 2**20
    limit = quantity(resources["limits"]["memory"])
    assert limit >= 1.5 * peak * 2**20
    assert "cpu" in resources["requests"]
    compose_limit = load_yaml(COMPOSE_FILE)["services"][name]["mem_limit"]
    assert quantity(compose_limit.replace("m", "Mi")) == limit


@pytest.mark.parametrize("name", APP_SERVICES)
def test_pods_run_unprivileged_and_read_only(rendered: list[Resource], name: str) -> None:
    pod = workload(rendered, name)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    security = container(rendered, name)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_the_dev_overlay_changes_only_what_it_says() -> None:
    base, dev = build(K8S_DIR / "base"), build(K8S_DIR / "overlays" / "dev")
    assert {r["metadata"].get("namespace") for r in dev} == {"outbox-dev"}
    assert {r["metadata"].get("namespace") for r in base} == {None}
    for name in ("api", "auth", "indexer"):
        assert workload(dev, name)["spec"]["replicas"] == 1
    assert workload(dev, "relay")["spec"]["replicas"] == 2
    assert container(dev, "api")["image"] == "outbox-pipeline:local"
    dev_config = one(dev, "ConfigMap", "outbox-config")["data"]
    assert dev_config["OUTBOX_API_DOCS"] == "true"
    assert dev_config["OUTBOX_ENV"] == "prod"
    assert [(r["kind"], r["metadata"]["name"]) for r in base] == [
        (r["kind"], r["metadata"]["name"]) for r in dev
    ]
