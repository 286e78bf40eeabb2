"""Which collections a relay publishes: every collection, a list of them, or all but a list.

`OUTBOX_RELAY_COLLECTIONS` is a list (empty: every collection). Split relays, a change of
a relay's list and the records no relay owns need set algebra over "every collection
except these" as well, which a plain set cannot express; `CollectionScope` can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CollectionScope:
    """`names` when not `negated`; every collection except `names` when `negated`."""

    names: frozenset[str]
    negated: bool = False

    @classmethod
    def of(cls, collections: Iterable[str]) -> CollectionScope:
        """The scope of a relay setting: an empty list means every collection."""
        names = frozenset(collections)
        return cls(names) if names else ALL

    @property
    def is_all(self) -> bool:
        return self.negated and not self.names

    @property
    def is_empty(self) -> bool:
        return not self.negated and not self.names

    def contains(self, collection: str) -> bool:
        return (collection in self.names) != self.negated

    def minus(self, other: CollectionScope) -> CollectionScope:
        if not self.negated:
            if not other.negated:
                return CollectionScope(self.names - other.names)
            return CollectionScope(self.names & other.names)
        if not other.negated:
            return CollectionScope(self.names | other.names, negated=True)
        return CollectionScope(other.names - self.names)

    def intersect(self, other: CollectionScope) -> CollectionScope:
        return self.minus(ALL.minus(other))

    def union(self, other: CollectionScope) -> CollectionScope:
        return ALL.minus(ALL.minus(self).intersect(ALL.minus(other)))

    def mongo_filter(self) -> dict[str, Any]:
        """The outbox query selecting this scope's records (`{}`: every record)."""
        if self.is_all:
            return {}
        op = "$nin" if self.negated else "$in"
        return {"collection": {op: sorted(self.names)}}

    def as_setting(self) -> list[str]:
        """The list form of a relay setting ([]: every collection); only for such scopes."""
        if self.is_all:
            return []
        if self.negated or not self.names:
            raise ValueError(f"{self} is not a relay's collection list")
        return sorted(self.names)

    def describe(self) -> str:
        if self.is_all:
            return "every collection"
        if self.negated:
            return "every collection except " + ", ".join(sorted(self.names))
        return ", ".join(sorted(self.names)) or "no collection"


ALL = CollectionScope(frozenset(), negated=True)
NONE = CollectionScope(frozenset())
