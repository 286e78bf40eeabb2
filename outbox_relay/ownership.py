"""Who publishes which collection, from the relays' lease documents.

Every active relay writes its collection list into its lease document (`collections`,
[] for every collection; see `outbox_relay.lease`). From those registrations the relays
and `outbox status` work out the outbox records **no** relay publishes (a collection
missing from every split relay's list: they would wait silently until the TTL deleted
them) and collections two relay names both publish (each would publish every record of
it: duplicates). A lease document without the field (a relay older than this rule, or
one never started) registers nothing. A retired relay name's lease document keeps its
registration until it is deleted from `relay_leases`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from outbox_relay.scope import ALL, NONE, CollectionScope


@dataclass(frozen=True, slots=True)
class Registration:
    """One relay name's share of the outbox and how far it got."""

    relay: str
    scope: CollectionScope
    position_time: datetime | None = None


def registrations(leases: Iterable[Mapping[str, Any]]) -> list[Registration]:
    """The registrations carried by lease documents (those without `collections` skipped)."""
    found = []
    for doc in leases:
        collections = doc.get("collections")
        if not isinstance(collections, list):
            continue
        position = doc.get("position_time")
        if isinstance(position, datetime) and position.tzinfo is None:
            position = position.replace(tzinfo=UTC)
        found.append(
            Registration(
                relay=str(doc["_id"]),
                scope=CollectionScope.of(str(c) for c in collections),
                position_time=position if isinstance(position, datetime) else None,
            )
        )
    return found


def owned(regs: Iterable[Registration]) -> CollectionScope:
    scope = NONE
    for reg in regs:
        scope = scope.union(reg.scope)
    return scope


def unowned(regs: Iterable[Registration]) -> CollectionScope:
    """Collections no registered relay publishes (empty when one relay publishes all)."""
    return ALL.minus(owned(regs))


def overlaps(regs: Iterable[Registration]) -> list[tuple[str, str, CollectionScope]]:
    """Pairs of relay names that both publish some collection, and which."""
    found = []
    for a, b in itertools.combinations(sorted(regs, key=lambda r: r.relay), 2):
        shared = a.scope.intersect(b.scope)
        if not shared.is_empty:
            found.append((a.relay, b.relay, shared))
    return found


async def read_registrations(leases: AsyncCollection[dict[str, Any]]) -> list[Registration]:
    return registrations(
        [doc async for doc in leases.find({}, {"collections": 1, "position_time": 1})]
    )
