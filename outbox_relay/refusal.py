"""Which records Kafka refuses for good: learnt from aborted transactions, pure.

When the broker refuses a produce request (a record above the topic's or the broker's
size limit), every event in that request fails, not just the one at fault. A refusal
that names one event convicts it; one that names several makes them suspects, which the
next attempt produces in requests of their own to learn which one is at fault. A
convicted event goes to the dead-letter topic instead of its event topic, in the same
transaction as the batch; a dead letter that is itself refused loses its value (the body
stays in the outbox for a redrive).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from infra.dead_letter import dead_letter_message
from infra.envelope import KafkaMessage


def dead_letter_for(message: KafkaMessage, reason: str, dlq_topic: str) -> KafkaMessage:
    """The DLQ form of an event Kafka refused; the value is dropped if it is what is too big."""
    too_big = "SIZE" in reason.upper() or "TOO_LARGE" in reason.upper()
    return dead_letter_message(message, reason, dlq_topic, stage="relay", keep_value=not too_big)


def without_value(letter: KafkaMessage) -> KafkaMessage:
    """A dead letter without the value Kafka refused to take."""
    if letter.dead_letter is None:
        raise ValueError("only a dead letter may lose its value")
    return replace(letter, value=None, dead_letter=replace(letter.dead_letter, value=None))


class RefusalTracker:
    """Refused and suspect event ids across the retries of one relay (see the module)."""

    def __init__(self, dlq_topic: str) -> None:
        self._dlq_topic = dlq_topic
        self.refused: dict[str, str] = {}  # event id → why Kafka refused it for good
        self.suspects: set[str] = set()  # in a produce request Kafka refused

    @property
    def isolate(self) -> frozenset[str]:
        return frozenset(self.suspects)

    def learn(self, refused: Mapping[str, str]) -> None:
        """An aborted transaction's refusals: convict a lone or suspect event, suspect others."""
        for event_id, reason in refused.items():
            if len(refused) == 1 or event_id in self.suspects:
                self.refused[event_id] = reason
            else:
                self.suspects.add(event_id)

    def apply(self, message: KafkaMessage) -> KafkaMessage:
        """The message to produce for `message` after what was learnt."""
        reason = self.refused.get(message.event_id)
        if reason is None:
            return message
        if message.dead_letter is not None:
            return without_value(message) if message.value is not None else message
        return dead_letter_for(message, reason, self._dlq_topic)

    def committed(self, event_ids: Iterable[str], dead_lettered: Iterable[str]) -> None:
        """A batch committed: its events are no longer suspect, its dead letters are done."""
        if self.suspects:
            self.suspects.difference_update(event_ids)
        for event_id in dead_lettered:
            self.refused.pop(event_id, None)

    @property
    def active(self) -> bool:
        """Whether any event is convicted: only then must each message be looked at."""
        return bool(self.refused)
