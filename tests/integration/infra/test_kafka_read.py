"""Reading partitions to their end: never short of what committed, never forever."""

from __future__ import annotations

import asyncio
import threading

import pytest
from confluent_kafka import Producer

from infra.errors import RetriableError
from infra.kafka import ensure_topics, read_to_end, topic_partitions
from infra.settings import Settings


def _transactional(settings: Settings, name: str) -> Producer:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "transactional.id": name})
    producer.init_transactions(10)
    return producer


def _commit(producer: Producer, topic: str, *values: bytes) -> None:
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, value=value)
    producer.commit_transaction(10)


async def test_a_read_waits_for_another_producers_open_transaction_instead_of_stopping_short(
    settings: Settings,
) -> None:
    """Reading only to the last stable offset would miss `a2`, committed after `b1` began."""
    topic = f"{settings.kafka.namespace}.t"
    await ensure_topics(settings.kafka, {topic: {}}, partitions=1)
    a = _transactional(settings, f"{settings.kafka.namespace}.a")
    b = _transactional(settings, f"{settings.kafka.namespace}.b")
    _commit(a, topic, b"a1")
    b.begin_transaction()
    b.produce(topic, value=b"b1")
    b.flush(10)  # b's transaction stays open
    _commit(a, topic, b"a2")
    parts = await asyncio.to_thread(topic_partitions, settings.kafka, [topic])

    read: list[bytes | None] = []
    reading = threading.Thread(
        target=lambda: read.extend(
            m.value for m in read_to_end(settings.kafka, parts, purpose="test", idle_timeout_s=60)
        )
    )
    reading.start()
    for _ in range(100):  # until the reader stands at the open transaction
        if read:
            break
        await asyncio.sleep(0.1)
    assert read == [b"a1"]
    await asyncio.sleep(1.0)  # a reader that stops at the last stable offset ends meanwhile
    assert reading.is_alive(), f"stopped short with {read}"
    await asyncio.to_thread(b.commit_transaction, 10)
    await asyncio.to_thread(reading.join, 60)
    assert read == [b"a1", b"b1", b"a2"]


async def test_a_read_held_back_without_progress_fails_retriably_naming_the_partition(
    settings: Settings,
) -> None:
    topic = f"{settings.kafka.namespace}.t"
    await ensure_topics(settings.kafka, {topic: {}}, partitions=1)
    b = _transactional(settings, f"{settings.kafka.namespace}.b")
    b.begin_transaction()
    b.produce(topic, value=b"b1")
    b.flush(10)
    parts = await asyncio.to_thread(topic_partitions, settings.kafka, [topic])

    def read_all() -> list[object]:
        return list(read_to_end(settings.kafka, parts, purpose="test", idle_timeout_s=1.0))

    with pytest.raises(RetriableError, match=rf"{topic}\[0\]"):
        await asyncio.to_thread(read_all)
    await asyncio.to_thread(b.abort_transaction, 10)
