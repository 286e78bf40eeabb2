"""Commit → searchable latency of recent writes, read from what Elasticsearch holds.

Every indexed document carries `committed_at` (the outbox record's time: MongoDB's clock
at the write's commit) and `indexed_at` (the indexer's clock as it built the bulk
request). A document becomes searchable at the index's next refresh after that bulk, so
for each document indexed in the window:

    commit → searchable  ≤  (indexed_at - committed_at) + refresh interval

which is what this reports (the refresh interval taken whole: an upper bound for the
wait for the refresh; the bulk request's own milliseconds are not in it). Why this
source: it measures real writes end to end without adding anything to the write or the
index path, it is the same on every API replica (no per-process window to merge), and it
survives restarts. What it cannot see: only each document's *newest* version is in the
index, so a document written many times in the window counts once (its last write);
documents rebuilt by `outbox reindex` show their age (their `committed_at` is old); and
`indexed_at` and `committed_at` come from two hosts' clocks, so clock skew adds to it.
The indexer's histogram `outbox_end_to_end_lag_seconds` counts every event but lives in
each indexer process (Prometheus); this is the view an admin gets from the API alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from infra.elastic import map_elastic_error
from infra.envelope import format_time
from infra.index_layout import COMMITTED_AT_FIELD, INDEXED_AT_FIELD
from infra.settings import ElasticSettings

DEFAULT_WINDOW_S = 300
DEFAULT_BUCKET_S = 15
MAX_SAMPLES = 10_000  # Elasticsearch's default index.max_result_window
DEFAULT_REFRESH_S = 1.0  # Elasticsearch's default index.refresh_interval

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 0.001}


@dataclass(frozen=True, slots=True)
class Sample:
    """One indexed document: when it was indexed, and how long after its commit."""

    indexed_at: datetime
    seconds: float


@dataclass
class Bucket:
    start: datetime
    count: int = 0
    p50_s: float | None = None
    p99_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "count": self.count,
            "p50_s": self.p50_s,
            "p99_s": self.p99_s,
        }


@dataclass
class FreshnessReport:
    """Commit → searchable (upper bound) p50/p99 over the window and per bucket."""

    now: datetime
    window_s: int
    bucket_s: int
    refresh_interval_s: float | None
    samples: int = 0
    truncated: bool = False
    p50_s: float | None = None
    p99_s: float | None = None
    buckets: list[Bucket] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "window_s": self.window_s,
            "bucket_s": self.bucket_s,
            "refresh_interval_s": self.refresh_interval_s,
            "samples": self.samples,
            "truncated": self.truncated,
            "p50_s": self.p50_s,
            "p99_s": self.p99_s,
            "buckets": [b.as_dict() for b in self.buckets],
        }


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (0 < q ≤ 100) of an ascending sequence; None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def parse_interval(value: str | None) -> float | None:
    """An Elasticsearch time value in seconds; None for `-1` (refresh disabled)."""
    if value is None:
        return DEFAULT_REFRESH_S
    if value.strip() == "-1":
        return None
    m = _DURATION_RE.match(value.strip())
    if m is None:
        return DEFAULT_REFRESH_S
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def summarize(
    samples: Iterable[Sample],
    *,
    now: datetime,
    window_s: int,
    bucket_s: int,
    refresh_interval_s: float | None,
    truncated: bool = False,
) -> FreshnessReport:
    """Percentiles over the whole window and per `bucket_s` (oldest bucket first).

    Each sample counts as `seconds + refresh interval`, never less than 0 (clock skew can
    make `indexed_at` precede `committed_at`)."""
    extra = refresh_interval_s or 0.0
    start = now - timedelta(seconds=window_s)
    n_buckets = max(1, math.ceil(window_s / bucket_s))
    per_bucket: list[list[float]] = [[] for _ in range(n_buckets)]
    everything: list[float] = []
    for sample in samples:
        offset = (sample.indexed_at - start).total_seconds()
        if offset < 0 or sample.indexed_at > now:
            continue
        value = max(0.0, sample.seconds) + extra
        everything.append(value)
        per_bucket[min(n_buckets - 1, int(offset // bucket_s))].append(value)
    everything.sort()
    report = FreshnessReport(
        now=now,
        window_s=window_s,
        bucket_s=bucket_s,
        refresh_interval_s=refresh_interval_s,
        samples=len(everything),
        truncated=truncated,
        p50_s=percentile(everything, 50),
        p99_s=percentile(everything, 99),
    )
    for i, values in enumerate(per_bucket):
        values.sort()
        report.buckets.append(
            Bucket(
                start=start + timedelta(seconds=i * bucket_s),
                count=len(values),
                p50_s=percentile(values, 50),
                p99_s=percentile(values, 99),
            )
        )
    return report


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def sample_of(source: dict[str, Any]) -> Sample | None:
    """The sample an indexed `_source` gives; None when it lacks either time."""
    committed = _parse_time(source.get(COMMITTED_AT_FIELD))
    indexed = _parse_time(source.get(INDEXED_AT_FIELD))
    if committed is None or indexed is None:
        return None
    return Sample(indexed, (indexed - committed).total_seconds())


async def _refresh_interval(es: AsyncElasticsearch, pattern: str) -> float | None:
    """The longest refresh interval of the pipeline's indices (the default when none)."""
    response = await es.indices.get_settings(
        index=pattern,
        name="index.refresh_interval",
        include_defaults=True,
        allow_no_indices=True,
        ignore_unavailable=True,
    )
    intervals: list[float | None] = []
    for entry in response.body.values():
        value = (entry.get("settings") or {}).get("index", {}).get("refresh_interval")
        if value is None:
            value = (entry.get("defaults") or {}).get("index", {}).get("refresh_interval")
        intervals.append(parse_interval(value))
    if not intervals:
        return DEFAULT_REFRESH_S
    if any(i is None for i in intervals):
        return None
    return max(i for i in intervals if i is not None)


async def freshness(
    es: AsyncElasticsearch,
    settings: ElasticSettings,
    *,
    window_s: int = DEFAULT_WINDOW_S,
    bucket_s: int = DEFAULT_BUCKET_S,
    now: datetime | None = None,
) -> FreshnessReport:
    """Sample the documents indexed in the last `window_s` seconds (newest first, at most
    `MAX_SAMPLES`) across every collection's index."""
    now = now or datetime.now(UTC)
    pattern = f"{settings.index_prefix}*"
    try:
        refresh_s = await _refresh_interval(es, pattern)
        response = await es.search(
            index=pattern,
            query={
                "range": {INDEXED_AT_FIELD: {"gte": format_time(now - timedelta(seconds=window_s))}}
            },
            sort=[{INDEXED_AT_FIELD: "desc"}],
            size=MAX_SAMPLES,
            source_includes=[COMMITTED_AT_FIELD, INDEXED_AT_FIELD],
            track_total_hits=MAX_SAMPLES + 1,
            allow_no_indices=True,
            ignore_unavailable=True,
        )
    except (ApiError, TransportError) as e:
        raise map_elastic_error(e) from e
    hits = response["hits"]["hits"]
    total = response["hits"]["total"]
    truncated = total.get("relation") == "gte" or int(total.get("value", 0)) > len(hits)
    samples = [s for s in (sample_of(h.get("_source") or {}) for h in hits) if s is not None]
    return summarize(
        samples,
        now=now,
        window_s=window_s,
        bucket_s=bucket_s,
        refresh_interval_s=refresh_s,
        truncated=truncated,
    )
