"""Settings for every service, from `OUTBOX_*` environment variables or a `.env` file.

Sections map to variable names with one underscore after the section name, so
`OUTBOX_MONGO_URI` sets `mongo.uri` and `OUTBOX_RELAY_BATCH_MAX_EVENTS` sets
`relay.batch_max_events`. Every default works with `outbox dev`.

A variable can also come from a file of the same name in `OUTBOX_SECRETS_DIR` (default
`/run/secrets`, where compose and Kubernetes mount secrets): the file
`/run/secrets/OUTBOX_AUTH_TOKEN_SECRET` sets `auth.token_secret`. Environment variables
win over files. Values that can hold a password (the MongoDB URI, Kafka's SASL password
and extra librdkafka settings, the Elasticsearch password, the token secret) are
`SecretStr`: they print as `**********`, and `redact_uri` shows a URI without its password.
"""

from __future__ import annotations

import json
import os
import re
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from infra import index_limits

DEV_TOKEN_SECRET = "dev-only-token-secret-change-me-0123456789"  # noqa: S105 - refused outside dev
DEV_CONSISTENCY_KEY = "dev-only-consistency-key-change-me-0123"  # refused when env=prod
# HS256 keys shorter than the hash output (32 bytes) are brute-forceable offline from one
# token (RFC 7518 section 3.2 requires at least this much).
MIN_TOKEN_SECRET_BYTES = 32
DEFAULT_SECRETS_DIR = "/run/secrets"


class ConfigurationError(ValueError):
    """A setting the service cannot run with; the message says which and how to fix it."""


def read_pem(path: str, setting: str) -> bytes:
    """A certificate or key file a setting names; `ConfigurationError` when unreadable."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as e:
        raise ConfigurationError(f"{setting}={path} cannot be read: {e.strerror}") from e


def redact_uri(uri: str) -> str:
    """The URI without its password, fit for logs, error messages and API answers."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, tail = rest.partition("/")
    credentials, at, hosts = authority.rpartition("@")
    if not at:
        return uri
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hosts}{slash}{tail}"


class MongoSettings(BaseModel):
    """MongoDB: the source of truth. Needs a replica set (transactions, change streams)."""

    # A secret: it carries the password when the server has users.
    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017/?directConnection=true")
    database: str = "outbox"
    outbox_collection: str = "outbox"
    users_collection: str = "users"
    server_selection_timeout_ms: int = 5000
    outbox_ttl_days: float = Field(default=7.0, gt=0)

    @property
    def display_uri(self) -> str:
        """The URI with its password masked."""
        return redact_uri(self.uri.get_secret_value())


class KafkaSettings(BaseModel):
    """Kafka. Every topic name derives from `namespace` (tests use a fresh one each)."""

    bootstrap: str = "127.0.0.1:9092"
    namespace: str = "outbox"
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # Large enough for the biggest document the API accepts plus headers.
    message_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # SASL (SCRAM or PLAIN) over `security_protocol`; the password is a secret.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ca_certs: str | None = None  # PEM of a private CA for SSL / SASL_SSL (ssl.ca.location)
    # Passed to librdkafka as is; every value is held as a secret (a key password, an
    # OAuth client secret can be among them).
    extra: dict[str, SecretStr] = Field(default_factory=dict)

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

    url: str = "http://127.0.0.1:9200"  # credentials go in username/password, not here
    index_prefix: str = "outbox-"
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: str | None = None  # PEM file for a private CA (Elasticsearch's own http_ca.crt)
    request_timeout_s: float = 30.0
    # index.refresh_interval of every index the indexer creates: a document is found by a
    # search at the next refresh after it was indexed (a realtime GET finds it at once).
    refresh_interval_s: float = Field(default=1.0, gt=0)
    # Per-collection mapping overrides, JSON: {"books": {"properties": {...}}}.
    mappings: dict[str, dict[str, object]] = Field(default_factory=dict)
    # What one document may map (infra/index_limits.py): the API refuses more, the indexer
    # dead-letters more, and every index is created with these as its own limits.
    total_fields_limit: int = Field(default=index_limits.TOTAL_FIELDS_LIMIT, ge=16)
    depth_limit: int = Field(default=index_limits.DEPTH_LIMIT, ge=2)
    nested_objects_limit: int = Field(default=index_limits.NESTED_OBJECTS_LIMIT, ge=1)
    field_name_max_chars: int = Field(default=index_limits.FIELD_NAME_MAX_CHARS, ge=1)

    def alias_for(self, collection: str) -> str:
        """The alias search and the indexer use; the concrete index behind it can change."""
        return f"{self.index_prefix}{collection}"


class AuthSettings(BaseModel):
    """The gRPC auth service and its clients."""

    target: str = "127.0.0.1:50051"
    host: str = "127.0.0.1"
    port: int = 50051
    # Only the auth service reads it (`signing_secret`): the API verifies through gRPC.
    token_secret: SecretStr = SecretStr(DEV_TOKEN_SECRET)
    token_ttl_seconds: int = Field(default=3600, ge=60, le=86400)  # auth_grpc.tokens caps at 24 h
    # Bounded: a revoked token, a disabled or demoted user stop working within this.
    verify_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9103
    # Server side (`outbox auth`): TLS when both are set; with `tls_client_ca`, clients
    # must present a certificate that CA signed (mutual TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Client side (the API): TLS when `tls_ca` is set, verifying the server against it; a
    # client certificate and key for mutual TLS.
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    # gRPC server reflection; unset means on, except when OUTBOX_ENV=prod.
    reflection: bool | None = None

    def signing_secret(self, env: str) -> str:
        """The token secret, refused when OUTBOX_ENV=prod and it is the built-in dev value
        or shorter than `MIN_TOKEN_SECRET_BYTES`; raises `ConfigurationError`."""
        secret = self.token_secret.get_secret_value()
        if env != "prod":
            return secret
        if secret == DEV_TOKEN_SECRET:
            raise ConfigurationError(
                "OUTBOX_AUTH_TOKEN_SECRET is not set (the built-in development value is "
                "refused when OUTBOX_ENV=prod); generate one with `openssl rand -hex 32`"
            )
        if len(secret.encode()) < MIN_TOKEN_SECRET_BYTES:
            raise ConfigurationError(
                f"OUTBOX_AUTH_TOKEN_SECRET is {len(secret.encode())} bytes; at least "
                f"{MIN_TOKEN_SECRET_BYTES} are required when OUTBOX_ENV=prod "
                "(generate one with `openssl rand -hex 32`)"
            )
        return secret

    # gRPC Register without an admin's token creates readers only when this is on.
    open_signup: bool = False
    # argon2 hashes at once (64 MiB each); 0: the CPUs this process may use (cgroup aware).
    max_concurrent_hashes: int = Field(default=0, ge=0)
    # Failed logins per username that cost nothing; then 1 s, doubling, up to the maximum.
    login_free_failures: int = Field(default=5, ge=1)
    login_max_delay_seconds: float = Field(default=300.0, gt=0)


class ApiSettings(BaseModel):
    """The REST API."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_depth: int = Field(default=32, ge=1)
    # HTTPS when both are set (uvicorn's ssl_certfile / ssl_keyfile).
    tls_cert: str | None = None
    tls_key: str | None = None
    # /docs, /redoc and /openapi.json; unset means on, except when OUTBOX_ENV=prod.
    docs: bool | None = None
    # Each collection costs a Kafka topic and an Elasticsearch index: a write that would
    # create one more than this is refused (api/collection_limit.py).
    max_collections: int = Field(default=1000, ge=1)
    # GET document and search without a token; off: a token whose scope covers the collection.
    public_reads: bool = True
    # Signs the consistency tokens writes return (`Outbox-Token`); set it in prod, the same on
    # every API replica. Not the auth service's signing secret, which the API never needs.
    consistency_key: SecretStr = SecretStr(DEV_CONSISTENCY_KEY)
    # Proxies whose X-Forwarded-For is believed (JSON list of addresses or CIDR networks).
    trusted_proxies: list[str] = Field(default_factory=list)
    # Failed logins per client address and minute; past that, 429 until the minute refills.
    login_failures_per_minute: int = Field(default=10, ge=1)
    # Searches per client address and second, with bursts of twice that.
    search_rate_per_second: float = Field(default=20.0, gt=0)
    # Elasticsearch stops collecting hits after this (server-side `timeout`).
    search_timeout_ms: int = Field(default=2000, ge=100, le=30000)
    # `total` is exact up to this many hits; past it `total_relation` is "gte".
    search_max_total: int = Field(default=10000, ge=1)
    # A write gives up after this; a commit whose outcome is then unknown is looked up.
    write_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # How long an Idempotency-Key and the result it stands for are kept.
    idempotency_ttl_hours: float = Field(default=24.0, gt=0)


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
    # A bulk request never exceeds this many bytes (Elasticsearch refuses requests over
    # http.max_content_length, 100 MB by default, with 413).
    bulk_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # A parked collection (its index refuses writes) is retried with backoff up to this.
    parked_retry_max_seconds: float = Field(default=30.0, gt=0)
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
    secrets_dir: str = DEFAULT_SECRETS_DIR  # OUTBOX_SECRETS_DIR, read before the rest
    mongo: MongoSettings = MongoSettings()
    kafka: KafkaSettings = KafkaSettings()
    es: ElasticSettings = ElasticSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    relay: RelaySettings = RelaySettings()
    indexer: IndexerSettings = IndexerSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment, then `.env`, then one file per variable in OUTBOX_SECRETS_DIR."""
        secrets = NestedSecretsSettingsSource(
            file_secret_settings,
            secrets_dir=os.environ.get("OUTBOX_SECRETS_DIR", DEFAULT_SECRETS_DIR),
            secrets_dir_missing="ok",
        )
        return init_settings, env_settings, dotenv_settings, secrets

    @property
    def reflection_enabled(self) -> bool:
        return self.auth.reflection if self.auth.reflection is not None else self.env != "prod"

    @property
    def docs_enabled(self) -> bool:
        return self.api.docs if self.api.docs is not None else self.env != "prod"


def settings_to_env(settings: Settings) -> dict[str, str]:
    """`OUTBOX_*` variables that rebuild `settings` in a child process (tests, `outbox dev`)."""
    env: dict[str, str] = {"OUTBOX_ENV": settings.env, "OUTBOX_SECRETS_DIR": settings.secrets_dir}
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
                text = json.dumps(value, default=_reveal)
            else:
                text = str(value)
            env[f"OUTBOX_{section_name.upper()}_{field_name.upper()}"] = text
    return env


def _reveal(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
