"""The offset ledger: a partition commits up to its lowest unresolved message, never past it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.offset_ledger import OffsetLedger

P = ("u.event.a", 0)


def test_an_unresolved_message_holds_back_its_partition_while_later_ones_resolve() -> None:
    """A parked event at offset 3: 4..9 are indexed, the partition still commits 3."""
    ledger = OffsetLedger()
    for offset in range(3, 10):
        ledger.take(P, offset)
    for offset in range(4, 10):
        assert ledger.resolve(P, offset)
    assert ledger.to_commit([P]) == {P: 3}
    assert ledger.outstanding(P) == 1
    assert ledger.resolve(P, 3)
    assert ledger.to_commit([P]) == {P: 10}


def test_confirmed_positions_are_not_sent_again() -> None:
    ledger = OffsetLedger()
    ledger.take(P, 0)
    ledger.resolve(P, 0)
    ledger.confirmed(P, 1)
    assert ledger.to_commit([P]) == {}
    ledger.confirmed(P, 0)  # a late, older confirmation changes nothing
    assert ledger.committed == {P: 1}


def test_after_a_partition_is_forgotten_a_late_acknowledgement_moves_nothing() -> None:
    """A batch still in flight when the partition was revoked (and taken back) must not
    commit past what the new assignment has not resolved."""
    ledger = OffsetLedger()
    for offset in range(10, 20):
        ledger.take(P, offset)
    ledger.forget([P])
    assert not ledger.resolve(P, 15)
    assert ledger.to_commit([P]) == {}
    ledger.take(P, 10)  # redelivered from the committed offset
    assert not ledger.resolve(P, 19)
    assert ledger.to_commit([P]) == {P: 10}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 3), min_size=1, max_size=40),
    st.data(),
)
def test_the_position_never_passes_an_unresolved_offset_and_never_moves_back(
    gaps: list[int], data: st.DataObject
) -> None:
    """Offsets taken in order (with gaps: transaction markers), resolved in any order: the
    position is always at or below every unresolved offset, never decreases, and ends one
    past the last offset once everything is resolved."""
    offsets: list[int] = []
    current = 0
    for gap in gaps:
        current += gap
        offsets.append(current)
    ledger = OffsetLedger()
    for offset in offsets:
        ledger.take(P, offset)
    order = data.draw(st.permutations(offsets))
    unresolved = set(offsets)
    last = -1
    for offset in order:
        assert ledger.resolve(P, offset)
        assert not ledger.resolve(P, offset), "resolved twice"
        unresolved.discard(offset)
        position = ledger.position(P)
        assert position is not None
        assert all(position <= u for u in unresolved)
        assert position >= last
        last = position
    assert ledger.position(P) == offsets[-1] + 1
