"""Settings: SPEC's variable names, dev defaults, and the prod secret guard."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from infra.settings import AuthSettings, Settings, settings_to_env


def test_spec_variable_names_reach_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_MONGO_URI", "mongodb://db:27017/?replicaSet=rs0")
    monkeypatch.setenv("OUTBOX_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("OUTBOX_ES_URL", "http://es:9200")
    monkeypatch.setenv("OUTBOX_AUTH_TARGET", "auth:50051")
    monkeypatch.setenv("OUTBOX_RELAY_BATCH_MAX_EVENTS", "7")
    monkeypatch.setenv("OUTBOX_RELAY_COLLECTIONS", '["a","b"]')
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.mongo.uri == "mongodb://db:27017/?replicaSet=rs0"
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


def test_production_refuses_the_default_token_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_ENV", "prod")
    with pytest.raises(ValidationError, match="OUTBOX_AUTH_TOKEN_SECRET"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("OUTBOX_AUTH_TOKEN_SECRET", "x" * 40)
    assert Settings(_env_file=None).env == "prod"  # type: ignore[call-arg]
