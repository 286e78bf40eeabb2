"""Rebalance bookkeeping of the consumer, without a broker (no commit is attempted)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition

from indexer.consumer import ConsumedMessage, KafkaEventSource, instance_id
from infra.settings import IndexerSettings, KafkaSettings, Settings


@pytest.fixture
def source() -> Iterator[KafkaEventSource]:
    # Never started: no group is joined and no commit is sent to this (closed) port.
    src = KafkaEventSource(Settings(kafka=KafkaSettings(bootstrap="127.0.0.1:9", namespace="u")))
    yield src
    src.stop()


def message(partition: int, offset: int) -> ConsumedMessage:
    return ConsumedMessage("u.event.a", partition, offset, b"k", b"{}", [])


def test_revoked_partitions_leave_the_buffer(source: KafkaEventSource) -> None:
    """Buffered messages of a revoked partition are dropped (the new owner gets them again)
    and never contribute an offset to commit."""
    source._on_assign(None, [TopicPartition("u.event.a", 0), TopicPartition("u.event.a", 1)])
    source._buffer.extend([message(0, 1), message(1, 7), message(0, 2)])
    source._on_revoke(None, [TopicPartition("u.event.a", 0)])
    assert list(source._buffer) == [message(1, 7)]
    assert source.assigned == frozenset({("u.event.a", 1)})


def test_lost_partitions_forget_their_uncommitted_offsets(source: KafkaEventSource) -> None:
    """After a partition is lost, its acknowledged-but-uncommitted offset is never committed:
    it could move the new owner's position backwards."""
    source._on_assign(None, [TopicPartition("u.event.a", 0), TopicPartition("u.event.a", 1)])
    source._uncommitted = {("u.event.a", 0): 10, ("u.event.a", 1): 4}
    source._on_lost(None, [TopicPartition("u.event.a", 0)])
    assert source._uncommitted == {("u.event.a", 1): 4}
    assert source.assigned == frozenset({("u.event.a", 1)})


def test_acknowledging_skips_partitions_no_longer_assigned(source: KafkaEventSource) -> None:
    source._on_assign(None, [TopicPartition("u.event.a", 0)])
    queued = source.acknowledge([message(3, 4), message(0, 8), message(0, 9)])
    assert queued == {("u.event.a", 0): 10}
    assert source._uncommitted == {("u.event.a", 0): 10}


def test_the_default_instance_id_is_the_group_and_the_host() -> None:
    """Static membership needs an id per replica: `<group_id>-<hostname>` unless set."""
    settings = Settings(indexer=IndexerSettings(group_id="g"))
    assert instance_id(settings).startswith("g-")
    assert len(instance_id(settings)) > 2
    explicit = Settings(indexer=IndexerSettings(group_id="g", instance_id="replica-7"))
    assert instance_id(explicit) == "replica-7"
