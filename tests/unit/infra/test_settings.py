"""Settings: SPEC's variable names, dev defaults, the prod secret guard, secret files and
secret types."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.kafka import base_config
from infra.settings import (
    DEV_TOKEN_SECRET,
    MIN_TOKEN_SECRET_BYTES,
    AuthSettings,
    ConfigurationError,
    KafkaSettings,
    MongoSettings,
    Settings,
    redact_uri,
    settings_to_env,
)


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test sets: no OUTBOX_* from the caller, no secret files from /run."""
    import os  # noqa: PLC0415 - only to list the caller's variables

    for name in [name for name in os.environ if name.startswith("OUTBOX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OUTBOX_SECRETS_DIR", str(tmp_path / "no-secrets"))


def test_spec_variable_names_reach_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_MONGO_URI", "mongodb://db:27017/?replicaSet=rs0")
    monkeypatch.setenv("OUTBOX_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("OUTBOX_ES_URL", "http://es:9200")
    monkeypatch.setenv("OUTBOX_AUTH_TARGET", "auth:50051")
    monkeypatch.setenv("OUTBOX_RELAY_BATCH_MAX_EVENTS", "7")
    monkeypatch.setenv("OUTBOX_RELAY_COLLECTIONS", '["a","b"]')
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.mongo.uri.get_secret_value() == "mongodb://db:27017/?replicaSet=rs0"
    assert s.kafka.bootstrap == "kafka:9092"
    assert s.es.url == "http://es:9200"
    assert s.auth.target == "auth:50051"
    assert s.relay.batch_max_events == 7
    assert s.relay.collections == ["a", "b"]


def test_settings_to_env_rebuilds_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        _env_file=None,  # type: ignore[call-arg]
        env="test",
        auth=AuthSettings(token_secret=SecretStr("s" * 40), port=1234),
    )
    for name, value in settings_to_env(original).items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == original  # type: ignore[call-arg]


def test_topic_names_derive_from_the_namespace() -> None:
    kafka = Settings(_env_file=None).kafka  # type: ignore[call-arg]
    assert kafka.event_topic("books") == "outbox.event.books"
    assert kafka.checkpoint_topic == "outbox.relay.checkpoints"
    assert kafka.dlq_topic == "outbox.dlq"


def test_only_the_auth_service_needs_the_secret_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings build in prod without a secret (api, relay and indexer never read it);
    the auth service's `signing_secret` refuses the built-in one."""
    monkeypatch.setenv("OUTBOX_ENV", "prod")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.env == "prod"
    with pytest.raises(ConfigurationError, match="OUTBOX_AUTH_TOKEN_SECRET is not set"):
        settings.auth.signing_secret(settings.env)
    assert settings.auth.signing_secret("dev") == DEV_TOKEN_SECRET


@pytest.mark.parametrize("secret", ["a", "changeme", "x" * (MIN_TOKEN_SECRET_BYTES - 1)])
def test_production_refuses_a_short_secret(secret: str) -> None:
    auth = AuthSettings(token_secret=SecretStr(secret))
    with pytest.raises(ConfigurationError, match=f"at least {MIN_TOKEN_SECRET_BYTES}"):
        auth.signing_secret("prod")
    assert auth.signing_secret("test") == secret


def test_production_accepts_a_32_byte_secret() -> None:
    secret = "k" * MIN_TOKEN_SECRET_BYTES
    assert AuthSettings(token_secret=SecretStr(secret)).signing_secret("prod") == secret


def test_a_file_in_the_secrets_dir_sets_a_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """compose and Kubernetes mount secrets as files named like the variable."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "OUTBOX_AUTH_TOKEN_SECRET").write_text("f" * 40 + "\n")
    (secrets / "OUTBOX_MONGO_URI").write_text("mongodb://outbox:pw@db:27017/?replicaSet=rs0")
    (secrets / "OUTBOX_KAFKA_SASL_PASSWORD").write_text("kafka-pw")
    monkeypatch.setenv("OUTBOX_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("OUTBOX_KAFKA_SASL_USERNAME", "outbox")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.auth.token_secret.get_secret_value() == "f" * 40
    assert settings.mongo.uri.get_secret_value() == "mongodb://outbox:pw@db:27017/?replicaSet=rs0"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "kafka-pw"
    assert settings.kafka.sasl_username == "outbox"
    monkeypatch.setenv("OUTBOX_AUTH_TOKEN_SECRET", "e" * 40)
    assert Settings(_env_file=None).auth.token_secret.get_secret_value() == "e" * 40  # type: ignore[call-arg]


def test_a_kubernetes_secret_volume_is_read_through_its_links(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Kubernetes mounts `KEY -> ..data/KEY`, `..data -> ..<timestamp>/`; hidden entries
    are skipped and the links followed."""
    secrets = tmp_path / "secrets"
    stamped = secrets / "..2026_11_29_15_00_00.123"
    stamped.mkdir(parents=True)
    (stamped / "OUTBOX_AUTH_TOKEN_SECRET").write_text("k" * 48)
    (secrets / "..data").symlink_to(stamped.name)
    (secrets / "OUTBOX_AUTH_TOKEN_SECRET").symlink_to("..data/OUTBOX_AUTH_TOKEN_SECRET")
    monkeypatch.setenv("OUTBOX_SECRETS_DIR", str(secrets))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.auth.token_secret.get_secret_value() == "k" * 48


def test_values_that_can_hold_a_password_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_MONGO_URI", "mongodb://outbox:S3cret-pw@db:27017/?replicaSet=rs0")
    monkeypatch.setenv("OUTBOX_KAFKA_EXTRA", '{"ssl.key.password": "S3cret-pw"}')
    monkeypatch.setenv("OUTBOX_KAFKA_SASL_PASSWORD", "S3cret-pw")
    monkeypatch.setenv("OUTBOX_ES_PASSWORD", "S3cret-pw")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert "S3cret-pw" not in text
    assert settings.mongo.display_uri == "mongodb://outbox:***@db:27017/?replicaSet=rs0"
    # ... and reach the clients and child processes intact.
    assert base_config(settings.kafka)["ssl.key.password"] == "S3cret-pw"
    assert settings_to_env(settings)["OUTBOX_KAFKA_EXTRA"] == '{"ssl.key.password": "S3cret-pw"}'


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "mongodb://u:p@h1:1,h2:2/db?replicaSet=rs0",
            "mongodb://u:***@h1:1,h2:2/db?replicaSet=rs0",
        ),
        ("mongodb://u:p%40ss@h/?authSource=admin", "mongodb://u:***@h/?authSource=admin"),
        ("https://elastic:pw@es:9200", "https://elastic:***@es:9200"),
        ("mongodb://h:27017/?directConnection=true", "mongodb://h:27017/?directConnection=true"),
        ("http://es:9200/a@b", "http://es:9200/a@b"),
    ],
)
def test_redact_uri_masks_the_password_and_keeps_the_rest(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_kafka_sasl_settings_become_librdkafka_settings() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="outbox",
        sasl_password=SecretStr("pw"),
        ca_certs="/ca.pem",
    )
    assert base_config(kafka) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "outbox",
        "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem",
    }
    with pytest.raises(ConfigurationError, match="OUTBOX_KAFKA_SASL_PASSWORD"):
        base_config(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u"))


@pytest.mark.parametrize(("env", "exposed"), [("dev", True), ("test", True), ("prod", False)])
def test_reflection_and_api_docs_are_off_in_production_unless_enabled(
    env: str, exposed: bool
) -> None:
    settings = Settings(_env_file=None, env=env)  # type: ignore[call-arg]
    assert settings.reflection_enabled is exposed
    assert settings.docs_enabled is exposed
    forced = Settings(
        _env_file=None,  # type: ignore[call-arg]
        env=env,
        auth=AuthSettings(reflection=not exposed),
        api={"docs": not exposed},
    )
    assert forced.reflection_enabled is not exposed
    assert forced.docs_enabled is not exposed


def test_mongo_uri_given_as_text_is_held_as_a_secret() -> None:
    assert isinstance(MongoSettings(uri="mongodb://a:b@h/").uri, SecretStr)  # type: ignore[arg-type]
