"""The audit's counting rules: lost, duplicated, misordered, drift, replayed, pending."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operator_tools.audit_rules import (
    JUDGE_ALL,
    Copy,
    EventState,
    Judging,
    Outcome,
    Placed,
    State,
    Tally,
    UnknownKind,
    content_digest,
    document_settled,
    judge_against_mongodb,
    judge_document,
    judge_event,
    judge_unknown,
    order_violations,
    parse_duration,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LIVE = Judging(start=T0 - timedelta(hours=1), judged_until=T0 - timedelta(minutes=2))
SETTLED = Judging(start=T0 - timedelta(hours=1), judged_until=JUDGE_ALL, require_ack=False)


def original(offset: int = 0, partition: int = 0) -> Copy:
    return Copy("ns.event.books", partition, offset, replayed=False)


def replay(offset: int = 9) -> Copy:
    return Copy("ns.event.books", 0, offset, replayed=True)


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("7d", 604800), ("2w", 1209600)],
)
def test_durations_read_as_operators_write_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "-1h", "0s", "1h foo", "1.5"])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- events --------------------------------------------------------------------------------


def test_a_record_with_one_original_copy_is_published_once() -> None:
    verdict = judge_event(T0 - timedelta(hours=1), [original()], LIVE)

    assert (verdict.state, verdict.extra_copies, verdict.replayed) == (EventState.PUBLISHED, 0, 0)


def test_a_due_record_with_no_copy_is_lost() -> None:
    assert judge_event(T0 - timedelta(minutes=5), [], LIVE).state is EventState.LOST


def test_a_record_newer_than_the_relay_position_minus_grace_is_pending_not_lost() -> None:
    assert judge_event(T0 - timedelta(minutes=1), [], LIVE).state is EventState.PENDING


def test_without_a_relay_checkpoint_no_record_is_judged_lost() -> None:
    never = Judging(start=T0 - timedelta(hours=1), judged_until=None)

    assert judge_event(T0 - timedelta(hours=1), [], never).state is EventState.PENDING


def test_a_settled_audit_calls_every_missing_record_lost() -> None:
    assert judge_event(T0 + timedelta(days=1), [], SETTLED).state is EventState.LOST


def test_each_extra_original_copy_counts_as_one_duplicate() -> None:
    verdict = judge_event(T0, [original(1), original(5), original(9, partition=2)], LIVE)

    assert (verdict.state, verdict.extra_copies) == (EventState.PUBLISHED, 2)


def test_replayed_copies_are_counted_as_replayed_never_as_duplicates() -> None:
    verdict = judge_event(T0, [original(1), replay(5), replay(7)], LIVE)

    assert (verdict.extra_copies, verdict.replayed) == (0, 2)


def test_a_record_only_an_operator_re_emitted_is_recovered_not_lost() -> None:
    verdict = judge_event(T0 - timedelta(hours=1), [replay()], LIVE)

    assert (verdict.state, verdict.extra_copies) == (EventState.RECOVERED, 0)


@given(
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=-600, max_value=600),
)
def test_an_event_is_lost_or_duplicated_only_by_its_original_copies(
    originals: int, replays: int, age_s: int
) -> None:
    copies = [original(i) for i in range(originals)] + [replay(100 + i) for i in range(replays)]
    verdict = judge_event(T0 - timedelta(minutes=2, seconds=age_s), copies, LIVE)

    assert verdict.extra_copies == max(0, originals - 1)
    assert verdict.replayed == replays
    assert (verdict.state is EventState.LOST) == (originals == replays == 0 and age_s >= 0)


def test_an_unknown_original_event_inside_the_window_is_unexpected() -> None:
    assert judge_unknown(T0, replayed=False, judging=LIVE) is UnknownKind.UNEXPECTED


def test_an_unknown_event_older_than_the_window_is_never_counted_as_a_duplicate() -> None:
    old = LIVE.start - timedelta(seconds=1)

    assert judge_unknown(old, replayed=False, judging=LIVE) is UnknownKind.OUTSIDE_WINDOW
    assert judge_unknown(old, replayed=True, judging=LIVE) is UnknownKind.OUTSIDE_WINDOW


def test_an_unknown_replayed_event_in_the_window_is_replayed() -> None:
    """reconcile --repair re-emits fresh ids for expired records: replayed, not a problem."""
    assert judge_unknown(T0, replayed=True, judging=LIVE) is UnknownKind.REPLAYED


# --- order ---------------------------------------------------------------------------------


def placed(
    offset: int,
    version: int,
    *,
    partition: int = 0,
    event_id: str | None = None,
    replayed: bool = False,
    counted: bool = True,
    timestamp_ms: int | None = None,
) -> Placed:
    return Placed(
        partition=partition,
        offset=offset,
        timestamp_ms=offset if timestamp_ms is None else timestamp_ms,
        event_id=event_id or f"e{version}",
        version=version,
        replayed=replayed,
        counted=counted,
    )


def test_versions_growing_along_the_partition_are_in_order() -> None:
    assert order_violations([placed(0, 1), placed(5, 2), placed(9, 4)]) == []


def test_a_version_that_goes_back_or_repeats_is_misordered() -> None:
    events = [placed(0, 1), placed(1, 3), placed(2, 2), placed(3, 2, event_id="other")]

    violations = order_violations(events)

    assert [(v.offset, v.version) for v in violations] == [(2, 2), (3, 2)]


def test_order_is_judged_by_offset_not_by_arrival() -> None:
    assert order_violations([placed(7, 3), placed(1, 1), placed(4, 2)]) == []


def test_one_document_on_two_partitions_is_misordered() -> None:
    violations = order_violations([placed(0, 1), placed(0, 2, partition=1, timestamp_ms=5)])

    assert [(v.partition, v.version) for v in violations] == [(1, 2)]
    assert "partition 0" in violations[0].reason


def test_a_replay_of_an_old_version_after_newer_ones_is_not_misordered() -> None:
    events = [placed(0, 1), placed(1, 2), placed(2, 1, replayed=True)]

    assert order_violations(events) == []


def test_a_second_copy_of_an_event_is_a_duplicate_not_also_a_misorder() -> None:
    events = [placed(0, 1), placed(1, 2), placed(2, 1, event_id="e1")]

    assert order_violations(events) == []


def test_an_unknown_event_of_the_window_is_left_to_the_duplicate_count() -> None:
    events = [placed(0, 1), placed(1, 2), placed(2, 1, event_id="stranger", counted=False)]

    assert order_violations(events) == []


# Strictly growing versions (gaps allowed: a gap is a loss, not a misorder).
_histories = st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=30).map(
    lambda steps: list(itertools.accumulate(steps))
)


@given(_histories, st.randoms(use_true_random=False))
def test_a_strictly_growing_history_on_one_partition_is_in_order_whatever_the_arrival(
    versions: list[int], rng: random.Random
) -> None:
    events = [placed(i * 2, v) for i, v in enumerate(versions)]
    rng.shuffle(events)

    assert order_violations(events) == []


@given(_histories, st.data())
def test_replays_and_extra_copies_anywhere_never_change_the_order_verdict(
    versions: list[int], data: st.DataObject
) -> None:
    events = [placed(i * 10, v) for i, v in enumerate(versions)]
    extra = []
    for n in range(data.draw(st.integers(min_value=0, max_value=10))):
        copied = data.draw(st.sampled_from(events))
        replayed = data.draw(st.booleans())
        offset = copied.offset + data.draw(st.integers(min_value=1, max_value=10_000)) * 10 + 1
        extra.append(
            placed(offset + n, copied.version, event_id=copied.event_id, replayed=replayed)
        )

    assert order_violations(events + extra) == []


@given(_histories.filter(lambda v: len(v) >= 2), st.data())
def test_swapping_two_versions_on_the_partition_is_always_caught(
    versions: list[int], data: st.DataObject
) -> None:
    i = data.draw(st.integers(min_value=0, max_value=len(versions) - 2))
    swapped = list(versions)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    events = [placed(n, v) for n, v in enumerate(swapped)]

    assert len(order_violations(events)) == 1


@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=20))
def test_each_partition_beyond_the_first_counts_once_per_partition(partitions: list[int]) -> None:
    events = [placed(n, n + 1, partition=p, timestamp_ms=n) for n, p in enumerate(partitions)]

    violations = order_violations(events)

    off_home = [v for v in violations if "partition" in v.reason]
    assert len(off_home) == len(set(partitions)) - 1


# --- documents -----------------------------------------------------------------------------


def live_state(version: int, body: object = None) -> State:
    return State(version, False, content_digest(body if body is not None else {"v": version}))


def tombstone(version: int) -> State:
    return State(version, True, None)


def test_an_index_holding_the_newest_version_is_in_sync() -> None:
    assert judge_document(live_state(3), live_state(3), settled=True) is Outcome.IN_SYNC
    assert judge_document(tombstone(4), tombstone(4), settled=True) is Outcome.IN_SYNC


def test_an_index_without_the_document_or_behind_it_drifts() -> None:
    assert judge_document(live_state(3), None, settled=True) is Outcome.MISSING
    assert judge_document(live_state(3), live_state(2), settled=True) is Outcome.STALE


def test_a_missing_tombstone_is_drift_too() -> None:
    """Without the tombstone a stale create could resurrect the document."""
    assert judge_document(tombstone(4), None, settled=True) is Outcome.MISSING
    assert judge_document(tombstone(4), live_state(3), settled=True) is Outcome.STALE


def test_the_same_version_with_another_body_or_flag_is_changed() -> None:
    newest = live_state(3, {"title": "Dune"})

    assert judge_document(newest, live_state(3, {"title": "Dunes"}), settled=True) is (
        Outcome.CHANGED
    )
    assert judge_document(newest, tombstone(3), settled=True) is Outcome.CHANGED


def test_an_unsettled_document_is_unindexed_not_drift() -> None:
    assert judge_document(live_state(3), None, settled=False) is Outcome.UNINDEXED


def test_an_index_ahead_of_the_window_is_settled_by_mongodb() -> None:
    assert judge_document(live_state(3), live_state(4), settled=False) is Outcome.ASK_MONGODB


def test_against_mongodb_an_index_ahead_of_the_source_of_truth_is_drift() -> None:
    assert judge_against_mongodb(live_state(3), live_state(4), LIVE) is Outcome.AHEAD
    assert judge_against_mongodb(live_state(4), live_state(4), LIVE) is Outcome.IN_SYNC


def test_against_mongodb_a_newer_write_is_unindexed_while_live_and_stale_once_settled() -> None:
    assert judge_against_mongodb(live_state(5), live_state(4), LIVE) is Outcome.UNINDEXED
    assert judge_against_mongodb(live_state(5), live_state(4), SETTLED) is Outcome.STALE


def test_a_live_index_entry_mongodb_never_had_is_extra_a_tombstone_is_not() -> None:
    assert judge_against_mongodb(None, live_state(2), LIVE) is Outcome.EXTRA
    assert judge_against_mongodb(None, tombstone(2), LIVE) is Outcome.IN_SYNC


def test_an_acknowledged_document_is_judged_at_once() -> None:
    assert document_settled(record_time=T0, acknowledged=True, in_kafka=True, judging=LIVE)


def test_a_document_whose_newest_event_awaits_the_indexer_is_not_judged() -> None:
    old = T0 - timedelta(hours=1)

    assert not document_settled(record_time=old, acknowledged=False, in_kafka=True, judging=LIVE)


def test_a_document_whose_newest_event_is_lost_is_judged() -> None:
    old, recent = T0 - timedelta(hours=1), T0
    assert document_settled(record_time=old, acknowledged=False, in_kafka=False, judging=LIVE)
    assert not document_settled(
        record_time=recent, acknowledged=False, in_kafka=False, judging=LIVE
    )


def test_a_settled_audit_judges_every_document() -> None:
    assert document_settled(record_time=T0, acknowledged=False, in_kafka=True, judging=SETTLED)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_the_content_digest_ignores_key_order(body: object) -> None:
    document = {"b": body, "a": [body]}
    reordered = {"a": [body], "b": body}

    assert content_digest(document) == content_digest(reordered)


def test_the_content_digest_tells_bodies_apart_but_not_1_from_1_0() -> None:
    assert content_digest({"n": 1}) != content_digest({"n": 2})
    assert content_digest({"n": 1}) == content_digest({"n": 1.0})
    assert content_digest(None) is None


def test_the_tally_keeps_counts_and_a_bounded_number_of_examples() -> None:
    tally = Tally()
    for n in range(25):
        tally.add("lost", example={"n": n})
    tally.add("lost", 0, {"n": "ignored"})

    assert tally.counts["lost"] == 25
    assert [e["n"] for e in tally.examples["lost"]] == list(range(10))
