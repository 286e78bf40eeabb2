"""Kafka primitives: client configuration, topics, error mapping, produce, read to the end.

confluent-kafka's calls block; async code runs them with `asyncio.to_thread` or in a
poll loop of its own, never directly on the event loop. Every stage uses these instead of
its own copy: one error taxonomy, one way to produce under back-pressure, one way to read
a set of partitions to their end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from infra.envelope import KafkaMessage
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


def durable(settings: KafkaSettings) -> dict[str, str]:
    """With replicas, `acks=all` must mean at least two of them, not whatever is in sync."""
    if settings.replication_factor < 2:
        return {}
    return {"min.insync.replicas": str(min(2, settings.replication_factor))}


def compacted(settings: KafkaSettings) -> dict[str, str]:
    """A compacted topic read from the start on every restart, so it stays short.

    Kafka never compacts the active segment: a new segment every hour and compaction as
    soon as a tenth of the log is superseded keep a read-back to about an hour of records
    whatever the uptime.
    """
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(3600 * 1000),
        "min.cleanable.dirty.ratio": "0.1",
        **durable(settings),
    }


def event_topic_config(settings: KafkaSettings) -> dict[str, str]:
    return {"max.message.bytes": str(settings.message_max_bytes + 64 * 1024), **durable(settings)}


async def ping(settings: KafkaSettings) -> None:
    def _list() -> None:
        admin_client(settings).list_topics(timeout=5)

    try:
        await asyncio.to_thread(_list)
    except KafkaException as e:
        raise ServerUnreachableError(f"Kafka at {settings.bootstrap} is unreachable: {e}") from e


class AbortTransactionError(RetriableError):
    """The open transaction cannot commit: abort it, then the work can be tried again."""


def map_kafka_error(e: KafkaException, what: str = "") -> RetriableError | FatalError:
    """Kafka's taxonomy → ours; "abort the transaction" stays apart from "retry the call".

    `fatal()` (e.g. fenced by a newer producer with the same transactional.id) is fatal;
    `txn_requires_abort()` is `AbortTransactionError`; `retriable()` is retriable, the call
    itself may be repeated; anything else cannot be fixed by trying again.
    """
    err: KafkaError = e.args[0]
    text = f"{what}: {err}" if what else str(err)
    if err.fatal():
        return FatalError(text)
    if err.txn_requires_abort():
        return AbortTransactionError(text)
    if err.retriable():
        return RetriableError(text)
    return FatalError(text)


# --- producing --------------------------------------------------------------------------

DeliveryCallback = Callable[[KafkaError | None, Message], None]
QUEUE_FULL_WAIT_S = 0.05


def produce(
    producer: Producer, message: KafkaMessage, on_delivery: DeliveryCallback | None = None
) -> None:
    """Queue `message`; when the local queue is full, serve delivery reports and try again.

    Blocking (the caller's thread). A `KafkaException` (e.g. the message is larger than
    `message.max.bytes`) propagates for the caller to decide.
    """
    while True:
        try:
            producer.produce(
                message.topic,
                key=message.key,
                value=message.value,
                headers=cast("list[tuple[str, str | bytes | None]]", message.headers),
                on_delivery=on_delivery,
            )
        except BufferError:
            producer.poll(QUEUE_FULL_WAIT_S)
            continue
        return


# --- reading to the end -----------------------------------------------------------------

# A read-back gives up after this long without a single message or partition end; the
# total time is unbounded, so a long history takes as long as it needs.
READ_IDLE_TIMEOUT_S = 30.0
READ_BATCH = 5000


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """One committed message of a read-back."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def _topics_metadata(settings: KafkaSettings) -> dict[str, Any]:
    try:
        return cast("dict[str, Any]", admin_client(settings).list_topics(timeout=10).topics)
    except KafkaException as e:
        raise map_kafka_error(e, "listing topics") from e


def topic_names(settings: KafkaSettings) -> set[str]:
    """The names of every topic on the cluster, blocking."""
    return set(_topics_metadata(settings))


def topic_partitions(settings: KafkaSettings, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of the existing `topics` (missing topics have none), blocking."""
    metadata = _topics_metadata(settings)
    return [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata
        for p in sorted(metadata[topic].partitions)
    ]


_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # the library leaves it unannotated


def end_offsets(
    settings: KafkaSettings, partitions: Sequence[TopicPartition]
) -> dict[tuple[str, int], int]:
    """Each partition's high watermark: its true end, open transactions included, blocking.

    A read_committed consumer's own watermark query answers the last stable offset, which
    any producer's open transaction holds back; reading only to there would miss what
    committed after that transaction began.
    """
    if not partitions:
        return {}
    admin = admin_client(settings)  # kept referenced until every future resolved
    futures = admin.list_offsets(
        {TopicPartition(tp.topic, tp.partition): _LATEST for tp in partitions},
        isolation_level=IsolationLevel.READ_UNCOMMITTED,
        request_timeout=10,
    )
    ends: dict[tuple[str, int], int] = {}
    try:
        for tp, future in futures.items():
            ends[(tp.topic, tp.partition)] = int(future.result().offset)
    except KafkaException as e:
        raise map_kafka_error(e, "reading partition ends") from e
    return ends


def read_to_end(
    settings: KafkaSettings,
    partitions: Sequence[TopicPartition],
    *,
    purpose: str,
    since: datetime | None = None,
    idle_timeout_s: float = READ_IDLE_TIMEOUT_S,
) -> Iterator[ReadMessage]:
    """Every committed message of `partitions`, from their offsets to their end, blocking.

    Offsets are the partitions' own (`OFFSET_BEGINNING` when unset), or the first message
    at or after `since`. The end is each partition's high watermark when the read starts:
    a partition is done when the consumer's position reaches it, so another producer's
    open transaction makes the read wait for it to resolve instead of stopping short.
    Raises `RetriableError` after `idle_timeout_s` without progress, naming the partitions.
    The consumer is assigned, never subscribed: it joins no group and commits nothing.
    """
    if not partitions:
        return
    group = f"{settings.namespace}.{purpose}.{uuid.uuid4().hex[:8]}"
    consumer = Consumer(consumer_config(settings, group, **{"enable.partition.eof": True}))
    try:
        ends = end_offsets(settings, partitions)
        starts = _start_offsets(consumer, partitions, since)
        pending = {key: end for key, end in ends.items() if starts.get(key, end) != -1 and end > 0}
        assigned = [TopicPartition(t, p, starts[(t, p)]) for t, p in pending]
        if not assigned:
            return
        consumer.assign(assigned)
        reached: dict[tuple[str, int], int] = {}
        last_progress = time.monotonic()
        while pending:
            for message in consumer.consume(num_messages=READ_BATCH, timeout=0.5):
                key = (message.topic() or "", message.partition() or 0)
                offset = message.offset() or 0
                err = message.error()
                if err is None:
                    last_progress = time.monotonic()
                    yield _read_message(message)
                    continue
                if err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal() or not err.retriable():
                        raise FatalError(f"reading back {key[0]}[{key[1]}]: {err}")
                    continue
                if offset > reached.get(key, -1):
                    reached[key] = offset
                    last_progress = time.monotonic()
                if key in pending and offset >= pending[key]:
                    del pending[key]
            if pending and time.monotonic() - last_progress > idle_timeout_s:
                stuck = ", ".join(
                    f"{t}[{p}] at {reached.get((t, p), '?')} of {end}"
                    for (t, p), end in sorted(pending.items())
                )
                raise RetriableError(
                    f"reading back Kafka made no progress for {idle_timeout_s:g}s: {stuck} "
                    "(an open transaction of another producer holds them back)"
                )
    except KafkaException as e:
        raise map_kafka_error(e, f"reading back {purpose}") from e
    finally:
        consumer.close()


def _start_offsets(
    consumer: Consumer, partitions: Sequence[TopicPartition], since: datetime | None
) -> dict[tuple[str, int], int]:
    """Where each partition's read starts; -1: nothing at or after `since` there."""
    if since is None:
        return {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            for tp in partitions
        }
    millis = int(since.timestamp() * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(tp.topic, tp.partition, millis) for tp in partitions], timeout=10
    )
    return {(tp.topic, tp.partition): tp.offset for tp in found}


def _read_message(message: Message) -> ReadMessage:
    raw_headers = message.headers() or []
    headers = list(raw_headers.items()) if isinstance(raw_headers, dict) else raw_headers
    _, timestamp_ms = message.timestamp()
    return ReadMessage(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        timestamp_ms=timestamp_ms,
        key=_as_bytes(message.key()),
        value=_as_bytes(message.value()),
        headers=[(k, _as_bytes(v)) for k, v in headers],
    )


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
