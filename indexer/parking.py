"""Parked collections: pure bookkeeping of which collections wait, why, with which events,
and when each is tried again.

A collection is *parked* when its index refuses writes for a reason no single event
causes and a retry of the batch would not fix soon: the index cannot be created (a bad
mapping override, the shard limit, a name an existing index holds), it is blocked or
closed, it has no write index, Elasticsearch answered 5xx for it. Its events are set
aside here (in memory, bounded: the consumer pauses the collection's partitions, so only
what was already fetched waits), and every other collection's events keep flowing. The
parked collection is tried again with exponential backoff and jitter, up to
`OUTBOX_INDEXER_PARKED_RETRY_MAX_SECONDS`; when a try gets through, its events are
indexed and acknowledged and its partitions resume.

Its unresolved events hold back their partitions' committed offsets (`OffsetLedger`), so
nothing is skipped across a restart; a restart redelivers them and they park again if
the cause remains.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from indexer.batch import Event

INITIAL_RETRY_S = 1.0


@dataclass
class ParkedCollection:
    """One parked collection."""

    collection: str
    reason: str
    since: datetime
    retry_at: float  # monotonic
    attempts: int = 0
    events: dict[tuple[str, int, int], Event] = field(default_factory=dict)  # by position

    def held(self) -> list[Event]:
        """The waiting events, in offset order per partition."""
        return [self.events[position] for position in sorted(self.events)]


class ParkingLot:
    """The parked collections of one indexer and their retry schedule."""

    def __init__(
        self,
        *,
        max_retry_s: float,
        initial_retry_s: float = INITIAL_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._max_retry_s = max_retry_s
        self._initial_retry_s = min(initial_retry_s, max_retry_s)
        self._clock = clock
        self._jitter = jitter
        self.parked: dict[str, ParkedCollection] = {}

    def __contains__(self, collection: str) -> bool:
        return collection in self.parked

    def park(self, collection: str, reason: str, events: Iterable[Event]) -> bool:
        """Set `events` aside; True if the collection was not parked before."""
        parked = self.parked.get(collection)
        new = parked is None
        if parked is None:
            parked = ParkedCollection(
                collection, reason, datetime.now(UTC), self._clock() + self._delay(0)
            )
            self.parked[collection] = parked
        parked.events.update((event.position, event) for event in events)
        return new

    def hold(self, events: Iterable[Event]) -> None:
        """Events of collections that are parked already wait with them."""
        for event in events:
            self.parked[event.collection].events[event.position] = event

    def failed_again(self, collection: str, reason: str, remaining: Iterable[Event]) -> None:
        """A retry did not get through: back off further; `remaining` still wait."""
        parked = self.parked[collection]
        parked.attempts += 1
        parked.reason = reason
        parked.events = {event.position: event for event in remaining}
        parked.retry_at = self._clock() + self._delay(parked.attempts)

    def release(self, collection: str) -> None:
        """The collection's index takes writes again."""
        self.parked.pop(collection, None)

    def due(self) -> list[str]:
        """Parked collections whose next try is due, oldest schedule first."""
        now = self._clock()
        return sorted(
            (c for c, p in self.parked.items() if p.retry_at <= now),
            key=lambda c: self.parked[c].retry_at,
        )

    def seconds_until_due(self) -> float | None:
        """How long until the next try is due (0 if one is); None when nothing is parked."""
        if not self.parked:
            return None
        return max(0.0, min(p.retry_at for p in self.parked.values()) - self._clock())

    def keep_partitions(self, assigned: Iterable[tuple[str, int]]) -> list[str]:
        """Drop the events of partitions no longer assigned (their new owner has them);
        return the collections left without events, which are released."""
        keep = set(assigned)
        emptied: list[str] = []
        for collection, parked in list(self.parked.items()):
            parked.events = {
                position: event
                for position, event in parked.events.items()
                if (position[0], position[1]) in keep
            }
            if not parked.events:
                emptied.append(collection)
                del self.parked[collection]
        return emptied

    def _delay(self, attempts: int) -> float:
        """Exponential backoff with full jitter between half and all of the step."""
        step = min(self._max_retry_s, self._initial_retry_s * 2.0**attempts)
        return step * (0.5 + 0.5 * self._jitter())
