"""The consumer's offset ledger: what was taken, what is resolved, what may be committed.

A plain class with no I/O (the consumer calls it under its lock). Per partition it holds
the offsets taken from the consumer and not yet *resolved* (acknowledged by Elasticsearch
or the DLQ). The offset a partition may commit is the lowest unresolved one, or one past
the highest resolved when none is left: nothing below it is unresolved, so a restart from
there skips nothing. An unresolved event therefore holds back its partition's commit
however many later events of that partition are resolved meanwhile; that is how a parked
collection's events (`indexer.parking`) keep their place while later events are indexed.
Redelivering those later events after a restart is harmless: external versions make a
second write a 409.

Messages are taken in offset order per partition (the consumer's buffer is FIFO), so every
message below the lowest unresolved offset was taken before and resolved. A resolution
counts only for an offset that is outstanding: after a rebalance took a partition away
(`forget`), a late acknowledgement from the batch in flight must not move the position of
whoever took the partition over, nor of this consumer if it got the partition back.
"""

from __future__ import annotations

from collections.abc import Iterable

TopicPartitionKey = tuple[str, int]


class OffsetLedger:
    """Outstanding offsets per partition and the commit position they allow."""

    def __init__(self) -> None:
        self._outstanding: dict[TopicPartitionKey, set[int]] = {}
        self._next: dict[TopicPartitionKey, int] = {}  # one past the highest resolved
        self.committed: dict[TopicPartitionKey, int] = {}  # confirmed by the broker

    def take(self, key: TopicPartitionKey, offset: int) -> None:
        """The consumer handed out the message at `offset`; it is outstanding until resolved."""
        self._outstanding.setdefault(key, set()).add(offset)

    def resolve(self, key: TopicPartitionKey, offset: int) -> bool:
        """The message at `offset` is done (indexed, stale or dead-lettered).

        Returns False (and changes nothing) for an offset that was not outstanding.
        """
        outstanding = self._outstanding.get(key)
        if outstanding is None or offset not in outstanding:
            return False
        outstanding.discard(offset)
        self._next[key] = max(self._next.get(key, 0), offset + 1)
        return True

    def outstanding(self, key: TopicPartitionKey) -> int:
        """How many taken messages of the partition are not resolved yet."""
        return len(self._outstanding.get(key, ()))

    def position(self, key: TopicPartitionKey) -> int | None:
        """The offset the partition may commit: nothing below it is unresolved."""
        outstanding = self._outstanding.get(key)
        if outstanding:
            return min(outstanding)
        return self._next.get(key)

    def to_commit(self, keys: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Positions of `keys` beyond what the broker has confirmed."""
        wanted: dict[TopicPartitionKey, int] = {}
        for key in keys:
            position = self.position(key)
            if position is not None and position > self.committed.get(key, -1):
                wanted[key] = position
        return wanted

    def confirmed(self, key: TopicPartitionKey, offset: int) -> None:
        """The broker confirmed a commit of `offset` for the partition."""
        if offset > self.committed.get(key, -1):
            self.committed[key] = offset

    def forget(self, keys: Iterable[TopicPartitionKey]) -> None:
        """The partitions are no longer ours: drop everything known about them."""
        for key in keys:
            self._outstanding.pop(key, None)
            self._next.pop(key, None)
            self.committed.pop(key, None)
