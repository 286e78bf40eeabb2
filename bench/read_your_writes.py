"""What a consistency token costs: a search with `after=<token>` right after each write.

Each round writes one document through the API, then searches with the write's token
(`after=`, so the answer waits until that version is searchable) and, right after, the
same search without it. The token search's time is the wait for the pipeline plus one
search; the plain search is the search alone; the difference is the extra latency a
client pays to read its own write. A token search that misses the document is counted
(`missed`): it must stay 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

WAIT_MS = 10_000


@dataclass
class ReadYourWrites:
    with_token_ms: list[float] = field(default_factory=list)
    plain_ms: list[float] = field(default_factory=list)
    missed: int = 0
    failed: int = 0

    @property
    def extra_ms(self) -> list[float]:
        """Per round: the token search's time minus the plain search's."""
        return [t - p for t, p in zip(self.with_token_ms, self.plain_ms, strict=True)]


async def measure_read_your_writes(
    http: httpx.AsyncClient, collection: str, *, rounds: int
) -> ReadYourWrites:
    """`rounds` write → search(after=token) → search rounds, one after the other."""
    result = ReadYourWrites()
    for n in range(rounds):
        marker = f"ryw-{n}-{time.monotonic_ns()}"
        written = await http.post(
            f"/v1/collections/{collection}/documents", json={"marker": marker, "n": n}
        )
        if written.status_code != 201:
            result.failed += 1
            continue
        body: dict[str, Any] = written.json()
        params: dict[str, str | int] = {"filter": f"marker:{marker}", "size": 1}
        started = time.perf_counter()
        waited = await http.get(
            f"/v1/collections/{collection}/search",
            params={**params, "after": body["token"], "wait_ms": WAIT_MS},
        )
        with_token = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        plain = await http.get(f"/v1/collections/{collection}/search", params=params)
        plain_ms = (time.perf_counter() - started) * 1000
        if waited.status_code != 200 or plain.status_code != 200:
            result.failed += 1
            continue
        if not any(hit.get("id") == body["id"] for hit in waited.json().get("hits", [])):
            result.missed += 1
        result.with_token_ms.append(with_token)
        result.plain_ms.append(plain_ms)
    return result
