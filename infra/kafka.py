"""Kafka client configuration, topic management and error mapping.

confluent-kafka's calls block; async code runs them with `asyncio.to_thread` or in a
poll loop of its own, never directly on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from infra.errors import FatalError, RetriableError, ServerUnreachableError
from infra.settings import ConfigurationError, KafkaSettings

log = structlog.get_logger(__name__)


def base_config(settings: KafkaSettings) -> dict[str, Any]:
    """Bootstrap, security (SASL / TLS) and the extra librdkafka settings, secrets revealed."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "security.protocol": settings.security_protocol.lower(),
    }
    if settings.security_protocol.startswith("SASL"):
        if not settings.sasl_username or settings.sasl_password is None:
            raise ConfigurationError(
                f"OUTBOX_KAFKA_SECURITY_PROTOCOL={settings.security_protocol} needs "
                "OUTBOX_KAFKA_SASL_USERNAME and OUTBOX_KAFKA_SASL_PASSWORD"
            )
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": settings.sasl_password.get_secret_value(),
        }
    if settings.ca_certs:
        config["ssl.ca.location"] = settings.ca_certs
    return config | {key: value.get_secret_value() for key, value in settings.extra.items()}


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Idempotent by default; the relay adds a `transactional.id`."""
    return {
        **base_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "message.max.bytes": settings.message_max_bytes + 64 * 1024,
        "linger.ms": 5,
        **overrides,
    }


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """read_committed, manual commits: offsets move only after the work is acknowledged."""
    return {
        **base_config(settings),
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.message.max.bytes": settings.message_max_bytes + 64 * 1024,
        "topic.metadata.refresh.interval.ms": 5000,  # pattern subscriptions see new topics soon
        **overrides,
    }


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(base_config(settings))


def _ensure_topics_blocking(
    settings: KafkaSettings, topics: dict[str, dict[str, str]], partitions: int | None
) -> None:
    admin = admin_client(settings)  # kept referenced until every future resolved
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as e:
        raise map_kafka_error(e) from e
    wanted = [
        NewTopic(
            name,
            num_partitions=partitions or settings.partitions,
            replication_factor=settings.replication_factor,
            config=config,
        )
        for name, config in topics.items()
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, request_timeout=15).items():
        try:
            future.result()
            log.info("topic_created", topic=name)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise map_kafka_error(e) from e


async def ensure_topics(
    settings: KafkaSettings,
    topics: dict[str, dict[str, str]],
    *,
    partitions: int | None = None,
) -> None:
    """Create missing topics (name → topic config); existing ones are left alone."""
    await asyncio.to_thread(_ensure_topics_blocking, settings, topics, partitions)


def compacted() -> dict[str, str]:
    return {"cleanup.policy": "compact"}


def event_topic_config(settings: KafkaSettings) -> dict[str, str]:
    return {"max.message.bytes": str(settings.message_max_bytes + 64 * 1024)}


async def ping(settings: KafkaSettings) -> None:
    def _list() -> None:
        admin_client(settings).list_topics(timeout=5)

    try:
        await asyncio.to_thread(_list)
    except KafkaException as e:
        raise ServerUnreachableError(f"Kafka at {settings.bootstrap} is unreachable: {e}") from e


def map_kafka_error(e: KafkaException) -> RetriableError | FatalError:
    err: KafkaError = e.args[0]
    if err.fatal():
        return FatalError(str(err))
    if err.txn_requires_abort():  # abort the transaction, then the work can be tried again
        return RetriableError(str(err))
    if err.retriable():
        return RetriableError(str(err))
    return FatalError(str(err))
