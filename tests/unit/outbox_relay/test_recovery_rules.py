"""The recovery's rules, without servers: windows, parts, per-document order, the skip window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bson.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from infra.settings import RelaySettings
from outbox_relay.change_stream import heartbeat_position, token_time
from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from outbox_relay.recovery import (
    RecoveryPart,
    SkipWindow,
    VersionGate,
    collections_changed,
    duplicate_possible,
    recovery_parts,
    recovery_window,
    scan_filter,
    skip_scanned,
    window_outlived_retention,
)
from outbox_relay.scope import ALL, CollectionScope

NOW = datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=UTC)
MARGIN = timedelta(seconds=120)


def change(event_id: str, at: int) -> dict[str, Any]:
    return {
        "_id": {"_data": event_id},
        "clusterTime": Timestamp(at, 1),
        "fullDocument": {"_id": event_id},
    }


# --- windows ----------------------------------------------------------------------------------


def test_the_scan_starts_a_margin_before_the_checkpoint_and_the_read_back_a_margin_earlier() -> (
    None
):
    """The read-back's extra margin absorbs a relay clock behind MongoDB's (Kafka timestamps
    come from the relay, record times from MongoDB)."""
    window = recovery_window(NOW, NOW - timedelta(days=1), MARGIN)
    assert window is not None
    assert window.scan_since == NOW - MARGIN
    assert window.readback_since == NOW - 2 * MARGIN
    assert timedelta(seconds=60) <= timedelta(seconds=RelaySettings().recovery_margin_seconds)


def test_no_read_back_reaches_before_the_oldest_retained_record() -> None:
    """A first start over days of event history reads Kafka only for the retained window."""
    oldest = NOW - timedelta(hours=1)
    first = recovery_window(None, oldest, MARGIN)
    assert first is not None
    assert first.scan_since is None  # every retained record
    assert first.readback_since == oldest - MARGIN
    late = recovery_window(NOW - timedelta(days=3), oldest, MARGIN)
    assert late is not None
    assert late.readback_since == oldest - MARGIN
    assert recovery_window(NOW, None, MARGIN) is None  # nothing retained, nothing to do


def test_a_window_reaching_into_what_the_ttl_deletes_is_reported() -> None:
    ttl = timedelta(days=7)
    oldest = NOW - ttl + timedelta(minutes=1)
    assert window_outlived_retention(NOW - ttl - MARGIN, oldest, now=NOW, ttl=ttl)
    assert not window_outlived_retention(NOW - MARGIN, oldest, now=NOW, ttl=ttl)
    assert not window_outlived_retention(None, oldest, now=NOW, ttl=ttl)  # first start
    assert not window_outlived_retention(NOW - ttl - MARGIN, oldest, now=NOW, ttl=None)


def test_the_scan_filter_selects_the_scope_from_the_window_start() -> None:
    assert scan_filter(NOW, CollectionScope.of(["books"])) == {
        "time": {"$gte": NOW},
        "collection": {"$in": ["books"]},
    }
    assert scan_filter(None, ALL) == {}
    assert scan_filter(None, ALL.minus(CollectionScope.of(["a"]))) == {
        "collection": {"$nin": ["a"]}
    }


def test_only_records_older_than_the_checkpoint_are_counted_as_possible_duplicates() -> None:
    assert duplicate_possible(NOW - timedelta(seconds=1), NOW)
    assert not duplicate_possible(NOW, NOW)
    assert not duplicate_possible(NOW - timedelta(days=1), None)  # first start: none published


# --- parts: a collection list that changed ---------------------------------------------------


def stream_checkpoint(collections: tuple[str, ...] | None) -> Checkpoint:
    return Checkpoint(
        relay="r",
        mode=CheckpointMode.STREAM,
        cluster_time=Timestamp(100, 1),
        collections=collections,
    )


def test_an_added_collection_is_recovered_from_its_whole_retained_history() -> None:
    cp = stream_checkpoint(("books",))
    configured = CollectionScope.of(["books", "authors"])
    assert collections_changed(cp, configured)
    assert recovery_parts(cp, configured, NOW) == [
        RecoveryPart(CollectionScope.of(["books"]), NOW),
        RecoveryPart(CollectionScope.of(["authors"]), None),
    ]


def test_a_relay_that_takes_every_collection_recovers_the_ones_it_did_not_have() -> None:
    cp = stream_checkpoint(("books",))
    assert recovery_parts(cp, ALL, NOW) == [
        RecoveryPart(CollectionScope.of(["books"]), NOW),
        RecoveryPart(ALL.minus(CollectionScope.of(["books"])), None),
    ]


def test_a_dropped_collection_or_a_format_1_checkpoint_is_no_change() -> None:
    assert not collections_changed(stream_checkpoint(("a", "b")), CollectionScope.of(["a"]))
    assert not collections_changed(stream_checkpoint(()), CollectionScope.of(["a"]))
    assert not collections_changed(stream_checkpoint(None), CollectionScope.of(["a"]))
    assert recovery_parts(stream_checkpoint(None), CollectionScope.of(["a"]), NOW) == [
        RecoveryPart(CollectionScope.of(["a"]), NOW)
    ]


# --- per-document order ------------------------------------------------------------------------


def raw(doc: str, version: int) -> dict[str, Any]:
    return {"_id": f"{doc}-v{version}", "collection": "c", "document_id": doc, "version": version}


def ids(records: list[Any]) -> list[str]:
    return [r["_id"] for r in records]


def test_a_version_the_scan_missed_is_fetched_and_published_before_the_next() -> None:
    """The O1 race: the scan sees v8 of a hot document but not v7 (its commit came after the
    scan passed it). v7 is fetched by document and version and goes first."""
    gate = VersionGate({("c", "x"): 6})
    scanned = [raw("x", 8), raw("x", 9), raw("y", 1), raw("y", 4)]
    assert gate.missing(scanned) == {("c", "x"): [(7, 7)], ("c", "y"): [(2, 3)]}
    ordered = gate.fill(scanned, [raw("x", 7), raw("y", 2), raw("y", 3)])
    assert ids(ordered) == ["x-v7", "x-v8", "x-v9", "y-v1", "y-v2", "y-v3", "y-v4"]
    assert gate.missing([raw("x", 10)]) == {}  # the gate remembers what went out


def test_versions_older_than_the_window_or_expired_are_simply_not_found() -> None:
    """`find_missing` looks only inside the window: what it does not return is covered by the
    checkpoint or gone with the TTL, and the scanned version goes out without it."""
    gate = VersionGate({})
    assert gate.missing([raw("old", 5)]) == {("c", "old"): [(1, 4)]}
    assert ids(gate.fill([raw("old", 5)], [])) == ["old-v5"]


@st.composite
def document_histories(draw: st.DrawFn) -> tuple[int, int, int, int, list[bool]]:
    """(versions n, in Kafka up to k, window from s, committed before T0 up to c, seen)."""
    n = draw(st.integers(1, 12))
    s = draw(st.integers(1, n))  # versions >= s are inside the scan window
    k = draw(st.integers(s - 1, n))  # everything older than the window is in Kafka
    c = draw(st.integers(k, n))  # committed before T0: the scan, which starts later, sees them
    # A version committed after T0 may be missed: committed after the scan passed it.
    seen = [v <= c or draw(st.booleans()) for v in range(1, n + 1)]
    return n, k, s, c, seen


@given(histories=st.lists(document_histories(), min_size=1, max_size=5))
def test_kafka_then_scan_then_stream_publish_each_version_once_in_order(
    histories: list[tuple[int, int, int, int, list[bool]]],
) -> None:
    """Whatever the scan misses of what committed during it, each version reaches Kafka
    once, in order: read back, then published by the recovery (scanned or fetched as
    missing), then by the stream."""
    versions = {f"d{i}": h for i, h in enumerate(histories)}
    kafka: dict[str, list[int]] = {d: list(range(1, h[1] + 1)) for d, h in versions.items()}
    gate = VersionGate({("c", d): h[1] for d, h in versions.items() if h[1]})
    scanned = [
        raw(d, v)
        for d, (n, k, s, _c, seen) in versions.items()
        for v in range(max(s, k + 1), n + 1)
        if seen[v - 1]
    ]
    missing = gate.missing(scanned)
    found = [
        raw(d, v)
        for (_, d), ranges in missing.items()
        for lo, hi in ranges
        for v in range(lo, hi + 1)
        if v >= versions[d][2]  # inside the window; every earlier version is committed
    ]
    published = gate.fill(scanned, found)
    skip = set(ids(published))
    for r in published:
        kafka[r["document_id"]].append(r["version"])
    for d, (n, _k, _s, c, _seen) in versions.items():
        for v in range(c + 1, n + 1):  # the stream, from T0, in commit order
            if f"{d}-v{v}" not in skip:
                kafka[d].append(v)
    for d, (n, *_rest) in versions.items():
        assert kafka[d] == list(range(1, n + 1)), (d, versions[d], kafka[d])


# --- the skip window and where a heartbeat stands -----------------------------------------------


def test_a_heartbeat_stands_where_its_resume_token_says_never_past_it() -> None:
    """An empty getMore's reply may carry an operation time past what the stream scanned:
    the window must close on the token's own time (D5)."""
    token = {"_data": "8263515D27000000012B022C0100296E5A1004"}
    assert token_time(token) == Timestamp(0x63515D27, 1)
    late_reply = Timestamp(0x63515D27 + 5, 1)
    assert heartbeat_position(
        token, floor=None, reply_time=late_reply, previous_reply_time=None
    ) == Timestamp(0x63515D27, 1)


def test_an_opaque_token_stands_at_the_previous_reply_not_the_last_one() -> None:
    """A server's own token format: the position is the operation time of the getMore
    before, which the stream had certainly reached when it scanned again."""
    opaque = {"_data": "5e000000117300000000"}
    assert token_time(opaque) is None
    assert heartbeat_position(
        opaque,
        floor=Timestamp(10, 1),
        reply_time=Timestamp(20, 1),
        previous_reply_time=Timestamp(15, 1),
    ) == Timestamp(15, 1)
    assert heartbeat_position(
        opaque, floor=Timestamp(10, 1), reply_time=Timestamp(20, 1), previous_reply_time=None
    ) == Timestamp(10, 1)


def test_an_implausible_token_time_is_not_believed() -> None:
    """A token that merely starts like MongoDB's (a BSON length of 0x82) decodes to a time
    before where the stream already was: ignored."""
    bson_like = {"_data": "82000000127300000000"}
    assert heartbeat_position(
        bson_like,
        floor=Timestamp(1_799_999_000, 1),
        reply_time=Timestamp(1_800_000_000, 1),
        previous_reply_time=Timestamp(1_799_999_999, 1),
    ) == Timestamp(1_799_999_999, 1)


@given(
    until=st.integers(10, 1000),
    change_at=st.integers(0, 2000),
    scanned=st.booleans(),
)
def test_the_stream_skips_a_scanned_event_only_inside_the_scan_window(
    until: int, change_at: int, scanned: bool
) -> None:
    """After the scan ended, no change can have been scanned: nothing is skipped then."""
    window = SkipWindow({"e1"} if scanned else set(), until=Timestamp(until, 1))
    skipped = window.covers(Timestamp(change_at, 1), "e1")
    assert skipped == (scanned and change_at <= until)
    assert window.passed(Timestamp(change_at, 1)) == (change_at > until)


def test_a_batch_straddling_the_end_of_the_scan_still_skips_the_scanned_ids_it_starts_with() -> (
    None
):
    """Scanned ids before the scan's end are dropped, later changes kept, then the window ends."""
    window = SkipWindow({"scanned-1", "scanned-2", "scanned-3"}, until=Timestamp(100, 1))
    batch = [
        change("scanned-1", 99),
        change("fresh-1", 99),  # committed during the scan but not seen by it
        change("scanned-2", 100),
        change("fresh-2", 101),
        change("fresh-3", 102),
    ]
    kept, next_window = skip_scanned(batch, Timestamp(102, 1), window)
    assert [c["fullDocument"]["_id"] for c in kept] == ["fresh-1", "fresh-2", "fresh-3"]
    assert next_window is None  # past the scan: normal checkpoints from here


def test_a_batch_inside_the_scan_window_keeps_the_window_for_the_next_batch() -> None:
    window = SkipWindow({"scanned-1"}, until=Timestamp(100, 1))
    kept, next_window = skip_scanned(
        [change("scanned-1", 98), change("fresh-1", 99)], Timestamp(99, 1), window
    )
    assert [c["fullDocument"]["_id"] for c in kept] == ["fresh-1"]
    assert next_window is window


@given(
    until=st.integers(10, 50),
    times=st.lists(st.integers(0, 60), min_size=1, max_size=30).map(sorted),
    scanned_mask=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_no_scanned_id_is_ever_published_again_whatever_the_batch_boundaries(
    until: int, times: list[int], scanned_mask: list[bool]
) -> None:
    """Split a stream any way into batches: exactly the ids the scan did not publish pass."""
    changes = [change(f"e{i}", t) for i, t in enumerate(times)]
    # Only a change committed no later than the scan's end can have been scanned.
    scanned = {f"e{i}" for i, t in enumerate(times) if scanned_mask[i] and t <= until}
    for cut in range(len(changes) + 1):
        window: SkipWindow | None = SkipWindow(set(scanned), until=Timestamp(until, 1))
        published: list[str] = []
        for batch in (changes[:cut], changes[cut:]):
            if not batch:
                continue
            kept, window = skip_scanned(batch, batch[-1]["clusterTime"], window)
            published += [c["fullDocument"]["_id"] for c in kept]
        assert published == [
            c["fullDocument"]["_id"] for c in changes if c["fullDocument"]["_id"] not in scanned
        ]
