"""Settings for every service, from `OUTBOX_*` environment variables or a `.env` file.

Sections map to variable names with one underscore after the section name, so
`OUTBOX_MONGO_URI` sets `mongo.uri` and `OUTBOX_RELAY_BATCH_MAX_EVENTS` sets
`relay.batch_max_events`. Every default works with `outbox dev`.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_TOKEN_SECRET = "dev-only-token-secret-change-me-0123456789"  # noqa: S105 - refused outside dev


class MongoSettings(BaseModel):
    """MongoDB: the source of truth. Needs a replica set (transactions, change streams)."""

    uri: str = "mongodb://127.0.0.1:27017/?directConnection=true"
    database: str = "outbox"
    outbox_collection: str = "outbox"
    users_collection: str = "users"
    server_selection_timeout_ms: int = 5000
    outbox_ttl_days: float = Field(default=7.0, gt=0)


class KafkaSettings(BaseModel):
    """Kafka. Every topic name derives from `namespace` (tests use a fresh one each)."""

    bootstrap: str = "127.0.0.1:9092"
    namespace: str = "outbox"
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # Large enough for the biggest document the API accepts plus headers.
    message_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    extra: dict[str, str] = Field(default_factory=dict)  # passed to librdkafka as is (SASL, TLS)

    def event_topic(self, collection: str) -> str:
        """`outbox.event.<collection>`: one topic per REST collection."""
        return f"{self.namespace}.event.{collection}"

    @property
    def event_topic_pattern(self) -> str:
        """Regex subscription that picks up new collections without a restart."""
        return f"^{re.escape(self.namespace)}\\.event\\..+"

    @property
    def checkpoint_topic(self) -> str:
        """The legacy checkpoint topic every relay name shared (read once on upgrade)."""
        return f"{self.namespace}.relay.checkpoints"

    def relay_checkpoint_topic(self, relay: str) -> str:
        """`<ns>.relay.<name>.checkpoints`: one relay name's own checkpoints, no one else's."""
        return f"{self.namespace}.relay.{relay}.checkpoints"

    @property
    def dlq_topic(self) -> str:
        return f"{self.namespace}.dlq"


class ElasticSettings(BaseModel):
    """Elasticsearch (`OUTBOX_ES_*`)."""

    url: str = "http://127.0.0.1:9200"
    index_prefix: str = "outbox-"
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: str | None = None  # PEM file for a private CA (Elasticsearch's own http_ca.crt)
    request_timeout_s: float = 30.0
    # Per-collection mapping overrides, JSON: {"books": {"properties": {...}}}.
    mappings: dict[str, dict[str, object]] = Field(default_factory=dict)

    def alias_for(self, collection: str) -> str:
        """The alias search and the indexer use; the concrete index behind it can change."""
        return f"{self.index_prefix}{collection}"


class AuthSettings(BaseModel):
    """The gRPC auth service and its clients."""

    target: str = "127.0.0.1:50051"
    host: str = "127.0.0.1"
    port: int = 50051
    token_secret: SecretStr = SecretStr(DEV_TOKEN_SECRET)
    token_ttl_seconds: int = Field(default=3600, ge=60)
    verify_cache_seconds: float = Field(default=5.0, ge=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9103


class ApiSettings(BaseModel):
    """The REST API."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_depth: int = Field(default=32, ge=1)


class RelaySettings(BaseModel):
    """The outbox relay."""

    # Part of a Kafka topic name (`<ns>.relay.<name>.checkpoints`) and transactional.id.
    name: str = Field(default="relay", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
    # Empty: every collection. Several relays with different names can split the outbox.
    collections: list[str] = Field(default_factory=list)
    batch_max_events: int = Field(default=500, ge=1)
    batch_max_ms: int = Field(default=100, ge=1)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    lease_ttl_seconds: float = Field(default=6.0, gt=0)
    # History-loss recovery re-reads Kafka and the outbox from checkpoint time minus this,
    # which must cover the longest write transaction.
    recovery_margin_seconds: float = Field(default=120.0, gt=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9101
    # Readiness turns red when records wait and no batch committed for this long.
    stall_after_seconds: float = Field(default=30.0, gt=0)


class IndexerSettings(BaseModel):
    """The Elasticsearch indexer."""

    group_id: str = "outbox-indexer"
    # Kafka static membership (group.instance.id): a restarted indexer gets its partitions
    # back at once instead of after the session timeout. Must differ per replica; empty
    # means "<group_id>-<hostname>".
    instance_id: str = ""
    batch_max_events: int = Field(default=1000, ge=1)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9102
    # Readiness turns red when events wait (consumer lag) and nothing was indexed this long.
    stall_after_seconds: float = Field(default=30.0, gt=0)


class LogSettings(BaseModel):
    """structlog: JSON outside a TTY unless told otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """All settings. Build it once in `main()` and pass it down; never at import time."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOX_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        extra="ignore",
    )

    env: Literal["dev", "test", "prod"] = "dev"
    mongo: MongoSettings = MongoSettings()
    kafka: KafkaSettings = KafkaSettings()
    es: ElasticSettings = ElasticSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    relay: RelaySettings = RelaySettings()
    indexer: IndexerSettings = IndexerSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _refuse_dev_secret_in_prod(self) -> Settings:
        if self.env == "prod" and self.auth.token_secret.get_secret_value() == DEV_TOKEN_SECRET:
            raise ValueError("OUTBOX_AUTH_TOKEN_SECRET must be set when OUTBOX_ENV=prod")
        return self


def settings_to_env(settings: Settings) -> dict[str, str]:
    """`OUTBOX_*` variables that rebuild `settings` in a child process (tests, `outbox dev`)."""
    env: dict[str, str] = {"OUTBOX_ENV": settings.env}
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if not isinstance(section, BaseModel):
            continue
        for field_name in type(section).model_fields:
            value = getattr(section, field_name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, list | dict):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"OUTBOX_{section_name.upper()}_{field_name.upper()}"] = text
    return env
