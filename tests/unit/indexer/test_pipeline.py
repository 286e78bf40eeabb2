"""The indexer's loop with its adapters swapped for in-memory ones (no servers): how it
splits a request Elasticsearch finds too large, parks and releases a collection, and
retries the DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import pytest

from indexer.batch import APPLIED, ItemOutcome, Outcome
from indexer.consumer import ConsumedMessage, TopicPartitionKey
from indexer.pipeline import DeadLetterMemory, Indexer
from indexer.progress import IndexerState
from indexer.sink import BulkRequestRefusedError, IndexUnusableError
from infra.dead_letter import DeadLetter
from infra.errors import RetriableError
from infra.settings import IndexerSettings, KafkaSettings, Settings
from tests.fixtures.indexer import make_record, message_for, wait_until


@dataclass
class MemorySource:
    """Hands out the batches it is given; records acknowledgements and held topics."""

    batches: asyncio.Queue[list[ConsumedMessage]] = field(default_factory=asyncio.Queue)
    acknowledged: list[ConsumedMessage] = field(default_factory=list)
    held: list[list[str]] = field(default_factory=list)
    partitions: set[TopicPartitionKey] = field(default_factory=set)

    def add(self, messages: list[ConsumedMessage]) -> None:
        self.partitions |= {m.topic_partition for m in messages}
        self.batches.put_nowait(messages)

    def start(self) -> None:
        pass

    async def next_batch(self, max_events: int) -> list[ConsumedMessage]:
        return await self.batches.get()

    def acknowledge(self, messages: Iterable[ConsumedMessage]) -> dict[TopicPartitionKey, int]:
        self.acknowledged += list(messages)
        return {}

    def hold(self, topics: Iterable[str]) -> None:
        self.held.append(sorted(topics))

    @property
    def assigned(self) -> frozenset[TopicPartitionKey]:
        return frozenset(self.partitions)

    def stop(self) -> None:
        pass


@dataclass
class MemorySink:
    """Takes every document; refuses requests over `max_request_bytes` with 413 (as
    Elasticsearch's http.max_content_length does) and the indices of `refused`."""

    max_request_bytes: int = 10**9
    refused: set[str] = field(default_factory=set)
    vanishing: set[str] = field(default_factory=set)  # aliases answering 404 every time
    requests: list[tuple[int, int]] = field(default_factory=list)  # (events, bytes) taken

    async def ensure_index(self, collection: str) -> str:
        if collection in self.refused:
            raise IndexUnusableError(f"index of {collection} refused")
        return f"a-{collection}"

    def forget(self, collection: str) -> None:
        pass

    async def bulk(self, bodies: Sequence[bytes]) -> list[ItemOutcome]:
        if sum(len(b) for b in bodies) > self.max_request_bytes:
            raise BulkRequestRefusedError(413, "413 Request Entity Too Large")
        self.requests.append((len(bodies), sum(len(b) for b in bodies)))
        aliases = [orjson.loads(b.split(b"\n")[0])["index"]["_index"] for b in bodies]
        missing = ItemOutcome(Outcome.INDEX_MISSING, "404 index_not_found_exception")
        return [missing if a in self.vanishing else APPLIED for a in aliases]


@dataclass
class MemoryDeadLetters:
    """A DLQ that fails the first `failures` deliveries."""

    failures: int = 0
    letters: list[DeadLetter] = field(default_factory=list)

    async def prepare(self) -> None:
        pass

    def deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        if self.failures:
            self.failures -= 1
            raise RetriableError("DLQ away")
        self.letters += letters
        return []

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


SETTINGS = Settings(
    kafka=KafkaSettings(namespace="u"),
    indexer=IndexerSettings(parked_retry_max_seconds=0.05, bulk_max_bytes=10**6),
)


@dataclass
class Running:
    source: MemorySource
    sink: MemorySink
    dead_letters: MemoryDeadLetters
    state: IndexerState


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    handle = Running(MemorySource(), MemorySink(), MemoryDeadLetters(), IndexerState())
    indexer = Indexer(
        SETTINGS,
        source=handle.source,
        sink=handle.sink,
        dead_letters=handle.dead_letters,
        state=handle.state,
    )
    task = asyncio.create_task(indexer.run())
    try:
        yield handle
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception():
        raise AssertionError("the indexer stopped") from task.exception()


def offsets(messages: list[ConsumedMessage]) -> list[int]:
    return sorted(m.offset for m in messages)


async def test_a_request_refused_as_too_large_is_split_and_an_event_too_large_alone_is_poison(
    running: Running,
) -> None:
    """413 for the whole request: halves are sent until each is taken; an event that is
    refused even alone is dead-lettered. The process never exits."""
    big = make_record("books", "big", 1, payload={"text": "x" * 5000})
    records = [make_record("books", f"d{i}", 1) for i in range(7)]
    messages = [message_for(r, offset=i) for i, r in enumerate([*records, big])]
    one = len(message_for(records[0]).value or b"") + 400
    running.sink.max_request_bytes = 3 * one
    running.source.add(messages)
    await wait_until(lambda: len(running.source.acknowledged) == 8, what="all acknowledged")
    assert sum(events for events, _ in running.sink.requests) == 7
    assert len(running.sink.requests) >= 3
    assert all(size <= running.sink.max_request_bytes for _, size in running.sink.requests)
    (letter,) = running.dead_letters.letters
    assert letter.key == b"big"
    assert "even alone" in letter.error


async def test_a_parked_collection_waits_while_others_flow_then_is_released(
    running: Running,
) -> None:
    running.sink.refused.add("films")
    films = [message_for(make_record("films", f"f{i}", 1), offset=i) for i in range(3)]
    books = [message_for(make_record("books", f"b{i}", 1), offset=i) for i in range(3)]
    running.source.add([*films, *books])
    await wait_until(lambda: "films" in running.state.parked, what="films parked")
    await wait_until(lambda: len(running.source.acknowledged) == 3, what="books acknowledged")
    assert offsets(running.source.acknowledged) == [0, 1, 2]
    assert {m.topic for m in running.source.acknowledged} == {"u.event.books"}
    assert running.source.held[-1] == ["u.event.films"]
    later = [message_for(make_record("films", "f9", 1), offset=9)]
    running.source.add(later)  # arrives while parked: waits with the others
    await wait_until(
        lambda: (
            running.state.parked.get("films") is not None
            and running.state.parked["films"].events == 4
        ),
        what="the later films event held",
    )
    running.sink.refused.clear()
    await wait_until(lambda: not running.state.parked, what="films released")
    await wait_until(lambda: len(running.source.acknowledged) == 7, what="films acknowledged")
    assert running.source.held[-1] == []
    assert running.state.events_dead_lettered == 0


async def test_a_failing_dlq_is_retried_and_offsets_wait_for_it(running: Running) -> None:
    running.dead_letters.failures = 2
    poison = message_for(make_record("books", "p", 1, payload={"": 1}), offset=0)
    good = message_for(make_record("books", "g", 1), offset=1)
    running.source.add([poison, good])
    await wait_until(lambda: len(running.source.acknowledged) == 2, what="both acknowledged")
    assert [letter.key for letter in running.dead_letters.letters] == [b"p"]
    assert running.state.retries >= 2


async def test_an_index_that_vanishes_again_and_again_parks_its_collection(
    running: Running,
) -> None:
    """A 404 makes the indexer create the index again; if it is gone again every time,
    the collection is parked instead of looping, and the others flow."""
    running.sink.vanishing.add(SETTINGS.es.alias_for("ghost"))
    ghost = message_for(make_record("ghost", "g", 1), offset=0)
    books = message_for(make_record("books", "b", 1), offset=0)
    running.source.add([ghost, books])
    await wait_until(lambda: "ghost" in running.state.parked, what="ghost parked")
    assert "vanished" in running.state.parked["ghost"].reason
    await wait_until(lambda: len(running.source.acknowledged) == 1, what="books acknowledged")
    assert running.source.acknowledged == [books]


def test_the_dead_letter_memory_remembers_by_partition_and_offset_and_forgets_the_oldest() -> None:
    memory = DeadLetterMemory(capacity=2)
    first, second, third = (
        message_for(make_record("books", f"d{i}", 1), offset=i) for i in range(3)
    )
    memory.remember([first, second])
    assert first in memory
    assert second in memory
    assert third not in memory
    memory.remember([third])
    assert first not in memory
    assert second in memory
    assert third in memory
