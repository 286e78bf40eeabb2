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


def take(source: KafkaEventSource, messages: list[ConsumedMessage]) -> None:
    """Messages handed out by `next_batch` (without an event loop)."""
    with source._lock:
        for m in messages:
            source._ledger.take(m.topic_partition, m.offset)


def test_lost_partitions_forget_their_acknowledged_but_uncommitted_offsets(
    source: KafkaEventSource,
) -> None:
    """After a partition is lost, its acknowledged-but-uncommitted offset is never committed:
    it could move the new owner's position backwards."""
    source._on_assign(None, [TopicPartition("u.event.a", 0), TopicPartition("u.event.a", 1)])
    batch = [message(0, 9), message(1, 3)]
    take(source, batch)
    source._on_lost(None, [TopicPartition("u.event.a", 0)])
    assert source.acknowledge(batch) == {("u.event.a", 1): 4}
    assert source._ledger.to_commit({("u.event.a", 0), ("u.event.a", 1)}) == {("u.event.a", 1): 4}
    assert source.assigned == frozenset({("u.event.a", 1)})


def test_acknowledging_skips_partitions_no_longer_assigned(source: KafkaEventSource) -> None:
    source._on_assign(None, [TopicPartition("u.event.a", 0)])
    batch = [message(3, 4), message(0, 8), message(0, 9)]
    take(source, batch)
    assert source.acknowledge(batch) == {("u.event.a", 0): 10}


def test_an_unacknowledged_message_holds_back_its_partitions_commit(
    source: KafkaEventSource,
) -> None:
    """A parked event (taken, never acknowledged) keeps its partition's position, while
    another partition's acknowledged events move on."""
    source._on_assign(None, [TopicPartition("u.event.a", 0), TopicPartition("u.event.a", 1)])
    batch = [message(0, 5), message(0, 6), message(1, 2), message(0, 7)]
    take(source, batch)
    assert source.acknowledge([batch[1], batch[2], batch[3]]) == {
        ("u.event.a", 0): 5,
        ("u.event.a", 1): 3,
    }


def test_held_topics_pause_their_assigned_partitions_and_resume_when_released(
    source: KafkaEventSource,
) -> None:
    calls: list[tuple[str, list[tuple[str, int]]]] = []

    class Recorder:
        def pause(self, partitions: list[TopicPartition]) -> None:
            calls.append(("pause", [(tp.topic, tp.partition) for tp in partitions]))

        def resume(self, partitions: list[TopicPartition]) -> None:
            calls.append(("resume", [(tp.topic, tp.partition) for tp in partitions]))

    real = source._consumer
    source._consumer = Recorder()  # type: ignore[assignment]
    try:
        source._on_assign(None, [TopicPartition("u.event.a", 0), TopicPartition("u.event.b", 0)])
        source.hold(["u.event.a"])
        source._sync_pauses()
        assert calls == [("pause", [("u.event.a", 0)]), ("resume", [("u.event.b", 0)])]
        calls.clear()
        source._sync_pauses()
        assert calls == []
        source.hold([])
        source._sync_pauses()
        assert calls == [("resume", [("u.event.a", 0)])]
    finally:
        source._consumer = real


def test_the_default_instance_id_is_the_group_and_the_host() -> None:
    """Static membership needs an id per replica: `<group_id>-<hostname>` unless set."""
    settings = Settings(indexer=IndexerSettings(group_id="g"))
    assert instance_id(settings).startswith("g-")
    assert len(instance_id(settings)) > 2
    explicit = Settings(indexer=IndexerSettings(group_id="g", instance_id="replica-7"))
    assert instance_id(explicit) == "replica-7"
