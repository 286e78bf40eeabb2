"""Which records Kafka refuses for good: convicted, suspected, dead-lettered, without servers."""

from __future__ import annotations

from infra.envelope import KafkaMessage
from outbox_relay.refusal import RefusalTracker, dead_letter_for

DLQ = "ns.dlq"


def event(event_id: str, value: bytes = b"{}") -> KafkaMessage:
    return KafkaMessage(
        topic="ns.event.books",
        key=b"k",
        value=value,
        headers=[("ce_id", event_id.encode())],
        event_id=event_id,
    )


def test_a_refusal_naming_one_event_convicts_it_and_it_goes_to_the_dlq() -> None:
    tracker = RefusalTracker(DLQ)
    tracker.learn({"e1": "MSG_SIZE_TOO_LARGE: big"})
    letter = tracker.apply(event("e1"))
    assert letter.topic == DLQ
    assert letter.value is None  # the size was the problem
    assert tracker.apply(event("e2")).topic == "ns.event.books"


def test_a_refusal_naming_several_makes_suspects_isolated_until_one_is_convicted() -> None:
    """A refused produce request fails every event in it; the retry sends suspects alone."""
    tracker = RefusalTracker(DLQ)
    tracker.learn({"e1": "MSG_SIZE_TOO_LARGE", "e2": "MSG_SIZE_TOO_LARGE"})
    assert tracker.isolate == {"e1", "e2"}
    assert not tracker.active
    tracker.learn({"e2": "MSG_SIZE_TOO_LARGE"})
    assert tracker.apply(event("e2")).topic == DLQ
    tracker.committed(["e1", "e2"], dead_lettered=["e2"])
    assert tracker.isolate == frozenset()
    assert not tracker.active


def test_a_refused_dead_letter_loses_its_value_so_kafka_takes_it() -> None:
    """A malformed record's dead letter carrying its whole stored form, refused as too big:
    the retry sends it without the value instead of aborting the same batch forever."""
    tracker = RefusalTracker(DLQ)
    letter = dead_letter_for(event("e1", b"x" * 100), "malformed outbox record: no type", DLQ)
    assert letter.value is not None
    tracker.learn({"e1": "MSG_SIZE_TOO_LARGE"})
    stripped = tracker.apply(letter)
    assert stripped.topic == DLQ
    assert stripped.value is None
    assert stripped.dead_letter is not None
    assert stripped.dead_letter.value is None
    assert stripped.headers == letter.headers
