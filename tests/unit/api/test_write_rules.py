"""What a write produces from the stored state: version, event type, payload, outbox record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.validation import InvalidInputError
from api.write_rules import (
    Command,
    Create,
    Delete,
    DocumentExistsError,
    DocumentNotFoundError,
    DocumentTooLargeError,
    IfMatch,
    Patch,
    PreconditionFailedError,
    Replace,
    StoredState,
    WritePlan,
    WriteRejectedError,
    etag,
    plan_write,
)
from infra.envelope import EventType, OutboxRecord

LIVE = StoredState(version=3, document={"a": 1, "b": {"c": 2}})
TOMBSTONE = StoredState(version=4, document=None)


def test_create_on_nothing_is_version_1_created() -> None:
    plan = plan_write(None, Create({"a": 1}))
    assert plan == WritePlan(1, EventType.CREATED, {"a": 1})


def test_create_on_a_live_document_conflicts() -> None:
    with pytest.raises(DocumentExistsError):
        plan_write(LIVE, Create({"a": 1}))


def test_create_after_delete_continues_the_version() -> None:
    assert plan_write(TOMBSTONE, Create({"x": 1})) == WritePlan(5, EventType.CREATED, {"x": 1})


def test_replace_creates_or_updates() -> None:
    assert plan_write(None, Replace({"z": 0})) == WritePlan(1, EventType.CREATED, {"z": 0})
    assert plan_write(LIVE, Replace({"z": 0})) == WritePlan(4, EventType.UPDATED, {"z": 0})
    assert plan_write(TOMBSTONE, Replace({"z": 0})) == WritePlan(5, EventType.CREATED, {"z": 0})


def test_patch_merges_into_the_live_document() -> None:
    plan = plan_write(LIVE, Patch({"a": None, "b": {"d": 3}}))
    assert plan == WritePlan(4, EventType.UPDATED, {"b": {"c": 2, "d": 3}})


@pytest.mark.parametrize("current", [None, TOMBSTONE])
def test_patch_and_delete_of_an_absent_document_are_not_found(current: StoredState | None) -> None:
    with pytest.raises(DocumentNotFoundError):
        plan_write(current, Patch({"a": 1}))
    with pytest.raises(DocumentNotFoundError):
        plan_write(current, Delete())


def test_delete_leaves_a_tombstone_at_the_next_version() -> None:
    plan = plan_write(LIVE, Delete())
    assert plan == WritePlan(4, EventType.DELETED, None)
    stored = plan.to_mongo("d1", datetime(2026, 1, 1, tzinfo=UTC))
    assert stored["deleted"] is True
    assert stored["document"] is None
    assert stored["version"] == 4
    assert StoredState.from_mongo(stored) == TOMBSTONE


def test_a_patch_that_grows_the_document_past_the_limit_is_refused() -> None:
    with pytest.raises(DocumentTooLargeError):
        plan_write(LIVE, Patch({"big": "x" * 2000}), max_document_bytes=1024)
    assert issubclass(DocumentTooLargeError, InvalidInputError)


@pytest.mark.parametrize(
    ("header", "matches_v3"),
    [
        ('"3"', True),
        ("3", True),
        ('W/"3"', True),
        ("*", True),
        ('"2", "3"', True),
        ('"4"', False),
        ('"abc"', False),
        ("", False),
        ('"3', False),
    ],
)
def test_if_match_forms(header: str, matches_v3: bool) -> None:
    parsed = IfMatch.parse(header)
    assert parsed is not None
    assert parsed.matches(LIVE) is matches_v3


def test_if_match_absent_header_is_none() -> None:
    assert IfMatch.parse(None) is None


@pytest.mark.parametrize("current", [None, TOMBSTONE])
@pytest.mark.parametrize("header", ["*", '"4"', '"1"'])
def test_if_match_on_an_absent_document_fails(current: StoredState | None, header: str) -> None:
    with pytest.raises(PreconditionFailedError):
        plan_write(current, Replace({"a": 1}), if_match=IfMatch.parse(header))


def test_if_match_mismatch_is_checked_before_anything_else() -> None:
    with pytest.raises(PreconditionFailedError):
        plan_write(LIVE, Delete(), if_match=IfMatch.parse('"2"'))
    assert plan_write(LIVE, Delete(), if_match=IfMatch.parse('"3"')).version == 4


def test_etag_is_the_quoted_version() -> None:
    assert etag(12) == '"12"'


def test_outbox_record_carries_the_plan() -> None:
    now = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)
    plan = plan_write(LIVE, Replace({"t": "x"}))
    record = plan.outbox_record(
        event_id="e-1", collection="books", document_id="b1", time=now, traceparent="00-tp"
    )
    assert record == OutboxRecord(
        event_id="e-1",
        collection="books",
        document_id="b1",
        version=4,
        type=EventType.UPDATED,
        payload={"t": "x"},
        time=now,
        traceparent="00-tp",
    )
    assert OutboxRecord.from_mongo(record.to_mongo()) == record


def test_a_delete_record_has_no_payload() -> None:
    record = plan_write(LIVE, Delete()).outbox_record(
        event_id="e", collection="c", document_id="d", time=datetime.now(UTC), traceparent=None
    )
    assert record.type is EventType.DELETED
    assert record.payload is None
    assert record.kafka_value() is None


commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Create, st.fixed_dictionaries({"n": st.integers(0, 9)})),
    st.builds(Replace, st.fixed_dictionaries({"n": st.integers(0, 9)})),
    st.builds(Patch, st.fixed_dictionaries({"m": st.integers(0, 9) | st.none()})),
    st.just(Delete()),
)


@given(st.lists(commands, max_size=30))
def test_versions_grow_by_exactly_one_per_accepted_write(history: list[Command]) -> None:
    """Across any sequence, including deletes and re-creates, versions never repeat or skip."""
    current: StoredState | None = None
    versions: list[int] = []
    for command in history:
        try:
            plan = plan_write(current, command)
        except WriteRejectedError:
            continue
        versions.append(plan.version)
        current = StoredState.from_mongo(plan.to_mongo("d", datetime.now(UTC)))
        expected_type = {
            Delete: EventType.DELETED,
            Patch: EventType.UPDATED,
        }.get(type(command))
        if expected_type is not None:
            assert plan.type is expected_type
    assert versions == list(range(1, len(versions) + 1))


@given(st.lists(commands, max_size=20))
def test_the_event_type_tells_whether_the_document_existed(history: list[Command]) -> None:
    current: StoredState | None = None
    for command in history:
        try:
            plan = plan_write(current, command)
        except WriteRejectedError:
            continue
        existed = current is not None and current.live
        if plan.type is EventType.CREATED:
            assert not existed
        else:
            assert existed
        payload: Any = plan.document
        assert (payload is None) == (plan.type is EventType.DELETED)
        current = StoredState(plan.version, plan.document)


@pytest.mark.parametrize("digits", [20, 4301, 100_000])
def test_an_if_match_of_any_length_parses_and_matches_nothing(digits: int) -> None:
    """Python refuses int() of over 4300 digits; that must be a 412, never a 500."""
    current = StoredState(version=3, document={})
    for header in ["1" * digits, f'"{"9" * digits}"', f'W/"{"1" * digits}", "3"']:
        parsed = IfMatch.parse(header)
        assert parsed is not None
    assert not IfMatch.parse("1" * digits).matches(current)  # type: ignore[union-attr]
    assert IfMatch.parse(f'"{"1" * digits}", "3"').matches(current)  # type: ignore[union-attr]
