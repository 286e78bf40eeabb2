"""The `hostile-writer` scenario's own checks (issue 11): what the hostile mix must leave.

`bench.hostile_writer.hostile_writes` runs beside the fault load and returns its
`HostileExpectations`. Once the load's collections audit clean, `observe` reads what the
pipeline shows for the hostile collections (MongoDB and Elasticsearch, the DLQ, the
parked collections `outbox status` names) and `judge` compares the two:

- **exact**: every collection without poison holds in Elasticsearch what MongoDB holds;
- **poisoned**: where the newest version is poison, everything else matches MongoDB and
  those documents sit at their newest indexable version (or are absent);
- **dlq**: every poison event is in the DLQ exactly once, and nothing else is;
- **parked**: `outbox status` names exactly the collections that must stay parked (the
  load's collections never are, so they were indexed while the hostile ones waited);
- **refused**: the API answered 422 to every document past a limit;
- **bulks**: no bulk request of the indexer went over its byte cap (its
  `outbox_indexer_bulk_bytes` histogram, the cap one of its bucket bounds), while the mix
  wrote a batch of several times the cap: the cap split it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from elasticsearch import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from bench.hostile_writer import HostileExpectations, HostileWriter
from operator_tools.clients import OperatorClients
from operator_tools.dlq_ops import list_entries
from operator_tools.status import status

State = dict[str, tuple[int, bool]]  # document id → (version, deleted)

# The restarted indexer may wait out a Kafka consumer group's 45 s session timeout after a
# SIGKILL before it consumes again: the mix's "wait until indexed" must outlast that.
INDEXED_TIMEOUT_S = 120.0
REFUSED_STATUS = 422


class PatientHostileWriter(HostileWriter):
    """The hostile writer, patient with an indexer that the harness keeps killing."""

    async def _indexed(
        self, collection: str, doc_id: str, timeout_s: float = INDEXED_TIMEOUT_S
    ) -> None:
        await super()._indexed(collection, doc_id, timeout_s=max(timeout_s, INDEXED_TIMEOUT_S))


@dataclass
class HostileObserved:
    """What the pipeline shows for the hostile collections."""

    mongo: dict[str, State] = field(default_factory=dict)
    index: dict[str, State] = field(default_factory=dict)
    dead_letters: Counter[str] = field(default_factory=Counter)  # ce_id → times in the DLQ
    parked: set[str] = field(default_factory=set)  # named by `outbox status`


@dataclass(frozen=True)
class HostileVerdict:
    """The hostile checks' counts; `ok` when every one holds."""

    exact: int  # collections (clean or poisoned) where Elasticsearch is what it must be
    collections: int
    mismatched: tuple[str, ...]  # "collection/id" examples
    dlq_once: int  # expected dead letters found exactly once
    dlq_expected: int
    dlq_repeated: int  # expected dead letters found more than once
    dlq_unexpected: int  # dead letters of events nothing expected there
    parked: tuple[str, ...]
    parked_expected: tuple[str, ...]
    refused_wrong: tuple[str, ...]  # over-limit bodies the API did not answer 422
    error: str = ""  # the hostile writer itself failed
    bulks: int = 0  # bulk requests the running indexer sent
    bulks_over_cap: int = 0  # of those, larger than the byte cap

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.exact == self.collections
            and self.dlq_once == self.dlq_expected
            and self.dlq_repeated == 0
            and self.dlq_unexpected == 0
            and self.parked == self.parked_expected
            and not self.refused_wrong
            and self.bulks_over_cap == 0
        )

    def summary(self) -> str:
        if self.error:
            return f"hostile: FAILED {self.error}"
        parked = ",".join(self.parked) or "none"
        line = (
            f"hostile: dlq={self.dlq_once}/{self.dlq_expected} repeated={self.dlq_repeated} "
            f"unexpected={self.dlq_unexpected} parked={parked} "
            f"exact={self.exact}/{self.collections} "
            f"bulks_over_cap={self.bulks_over_cap}/{self.bulks}"
        )
        if self.parked != self.parked_expected:
            line += f" (expected parked={','.join(self.parked_expected) or 'none'})"
        if self.mismatched:
            line += f" mismatched={','.join(self.mismatched[:5])}"
        if self.refused_wrong:
            line += f" not_refused={','.join(self.refused_wrong)}"
        return line


BULK_BYTES_METRIC = "outbox_indexer_bulk_bytes"


def bulks_over_cap(metrics_text: str, cap: int) -> tuple[int, int]:
    """(bulk requests, those over `cap` bytes) from the indexer's `/metrics` text.

    `cap` must be one of the histogram's bucket bounds, or the count cannot be read.
    """
    total: float | None = None
    within: float | None = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name != BULK_BYTES_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{BULK_BYTES_METRIC}_count":
                total = sample.value
            elif sample.name == f"{BULK_BYTES_METRIC}_bucket" and float(
                sample.labels["le"]
            ) == float(cap):
                within = sample.value
    if total is None:
        raise ValueError(f"no {BULK_BYTES_METRIC} histogram in the metrics")
    if within is None:
        raise ValueError(f"{cap} is not a bucket bound of {BULK_BYTES_METRIC}")
    return int(total), int(total - within)


async def indexer_bulks(metrics_port: int, cap: int) -> tuple[int, int]:
    """`bulks_over_cap` of the indexer answering on `metrics_port`."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
    response.raise_for_status()
    return bulks_over_cap(response.text, cap)


def expected_index(mongo: State, poison: Mapping[str, int | None]) -> State:
    """What Elasticsearch must hold given MongoDB and the documents whose newest is poison.

    A poisoned document sits at its newest indexable version (never deleted there), or is
    absent when it has none; every other document is at MongoDB's version and flag.
    """
    expected = {i: v for i, v in mongo.items() if i not in poison}
    expected |= {i: (v, False) for i, v in poison.items() if v is not None and i in mongo}
    return expected


def mismatches(mongo: State, index: State, poison: Mapping[str, int | None]) -> list[str]:
    """Document ids whose index entry is not what `expected_index` says, sorted."""
    expected = expected_index(mongo, poison)
    return sorted(i for i in expected.keys() | index.keys() if expected.get(i) != index.get(i))


def judge(
    expect: HostileExpectations,
    observed: HostileObserved,
    *,
    error: str = "",
    bulks: tuple[int, int] = (0, 0),
) -> HostileVerdict:
    """Compare what the hostile mix expects with what the pipeline shows."""
    poisons: dict[str, Mapping[str, int | None]] = {c: {} for c in expect.clean}
    poisons |= expect.poisoned
    exact = 0
    wrong: list[str] = []
    for collection, poison in sorted(poisons.items()):
        bad = mismatches(
            observed.mongo.get(collection, {}), observed.index.get(collection, {}), poison
        )
        exact += not bad
        wrong += [f"{collection}/{i}" for i in bad]
    dead = observed.dead_letters
    return HostileVerdict(
        exact=exact,
        collections=len(poisons),
        mismatched=tuple(wrong),
        dlq_once=sum(1 for ce_id in expect.dead_letters if dead[ce_id] == 1),
        dlq_expected=len(expect.dead_letters),
        dlq_repeated=sum(1 for ce_id in expect.dead_letters if dead[ce_id] > 1),
        dlq_unexpected=sum(n for ce_id, n in dead.items() if ce_id not in expect.dead_letters),
        parked=tuple(sorted(observed.parked)),
        parked_expected=tuple(sorted(expect.parked)),
        refused_wrong=tuple(
            sorted(name for name, code in expect.refused.items() if code != REFUSED_STATUS)
        ),
        error=error,
        bulks=bulks[0],
        bulks_over_cap=bulks[1],
    )


async def mongo_state(clients: OperatorClients, collection: str) -> State:
    return {
        str(raw["_id"]): (int(raw["version"]), bool(raw.get("deleted")))
        async for raw in clients.db[collection].find({}, {"version": 1, "deleted": 1})
    }


async def index_state(clients: OperatorClients, collection: str) -> State:
    alias = clients.settings.es.alias_for(collection)
    try:
        await clients.es.indices.refresh(index=alias)
        response: Any = await clients.es.search(
            index=alias, size=10_000, version=True, query={"match_all": {}}
        )
    except NotFoundError:
        return {}
    return {
        str(h["_id"]): (int(h["_version"]), bool(h["_source"]["deleted"]))
        for h in response["hits"]["hits"]
    }


async def observe(clients: OperatorClients, expect: HostileExpectations) -> HostileObserved:
    """Read what the pipeline shows for the hostile collections, as an operator would."""
    observed = HostileObserved()
    for collection in sorted(expect.clean | expect.poisoned.keys()):
        observed.mongo[collection] = await mongo_state(clients, collection)
        observed.index[collection] = await index_state(clients, collection)
    observed.dead_letters = Counter(e.headers.get("ce_id", "") for e in await list_entries(clients))
    # An instance's latest report: stale only if the indexer died, which the audit shows.
    report = await status(clients)
    observed.parked = {str(p["collection"]) for p in report.parked if not p["stale"]}
    return observed


async def judge_when_settled(
    clients: OperatorClients,
    expect: HostileExpectations,
    *,
    timeout_s: float,
    interval_s: float = 2.0,
) -> HostileVerdict:
    """Judge until every check holds or `timeout_s` passes; the last verdict either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        verdict = judge(expect, await observe(clients, expect))
        if verdict.ok or time.monotonic() >= deadline:
            return verdict
        await asyncio.sleep(interval_s)
