"""Write load through the REST API: a mixed closed-loop load and a steady open-loop one.

The load keeps a belief of which documents exist to pick sensible operations, but nothing
depends on it being right: a write whose answer was lost to a fault may or may not have
committed, and the audit takes MongoDB and the outbox as the truth, not this belief.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadStats:
    """What the load did: operations tried, answers by status, transport failures."""

    attempted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def committed(self) -> int:
        """Writes the API acknowledged (2xx)."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def summary(self) -> str:
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(self.statuses.items()))
        return (
            f"writes={self.attempted} acknowledged={self.committed} "
            f"transport_errors={self.transport_errors} statuses=[{statuses}]"
        )


def document_body(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "title": f"document {n}",
        "n": n,
        "tags": rng.sample(["red", "green", "blue", "amber", "violet"], k=2),
        "price": round(rng.uniform(1, 500), 2),
        "text": " ".join(rng.choice(["lorem", "ipsum", "dolor", "sit", "amet"]) for _ in range(20)),
    }


class MixedLoad:
    """Creates, replaces, patches and deletes over a fixed pool of document ids."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        collections: tuple[str, ...],
        documents_per_collection: int,
        concurrency: int,
        seed: int = 7,
    ) -> None:
        self._client = client
        self._concurrency = concurrency
        self._rng = random.Random(seed)
        self._ids = [
            (c, f"doc-{i:05d}") for c in collections for i in range(documents_per_collection)
        ]
        self._exists: set[tuple[str, str]] = set()
        self._busy: set[tuple[str, str]] = set()
        self.stats = LoadStats()

    async def run(self, stop: asyncio.Event, *, max_writes: int | None = None) -> LoadStats:
        """Write until `stop` is set (or `max_writes` were tried)."""
        self.stats = LoadStats()

        async def worker() -> None:
            while not stop.is_set() and (max_writes is None or self.stats.attempted < max_writes):
                await self._one()

        await asyncio.gather(*(worker() for _ in range(self._concurrency)))
        self.stats.ended = time.monotonic()
        return self.stats

    def _pick(self) -> tuple[str, str]:
        while True:
            key = self._rng.choice(self._ids)
            if key not in self._busy:  # one writer per document keeps If-Match-free writes sane
                return key

    async def _one(self) -> None:
        key = self._pick()
        self._busy.add(key)
        collection, doc_id = key
        path = f"/v1/collections/{collection}/documents/{doc_id}"
        roll = self._rng.random()
        body = document_body(self._rng, self.stats.attempted)
        if key not in self._exists:
            op, request = "create", self._client.put(path, json=body)
        elif roll < 0.5:
            op, request = "patch", self._client.patch(path, json={"n": self.stats.attempted})
        elif roll < 0.8:
            op, request = "replace", self._client.put(path, json=body)
        else:
            op, request = "delete", self._client.delete(path)
        self.stats.attempted += 1
        self.stats.by_op[op] += 1
        try:
            response = await request
        except httpx.TransportError:
            self.stats.transport_errors += 1
            await asyncio.sleep(0.05)  # the API is restarting or saturated; do not spin
            return
        finally:
            self._busy.discard(key)
        self.stats.statuses[response.status_code] += 1
        if response.status_code in (200, 201):
            self._exists.add(key)
        elif response.status_code in (204, 404):
            self._exists.discard(key)
        elif response.status_code >= 500:
            await asyncio.sleep(0.05)


def api_client(base_url: str, token: str, *, concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )
