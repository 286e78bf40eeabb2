"""Outbox retention: the relay alone sets the TTL, and never under an unpublished record.

The TTL index on `outbox.time` deletes records regardless of whether they were published.
Only the relay knows what is still unpublished, so only the active relay creates or changes
the TTL (`OUTBOX_MONGO_OUTBOX_TTL_DAYS`), and it refuses a TTL that would delete a record
no relay has published yet: the oldest unpublished record must stay younger than the TTL
minus the recovery margin (a history-loss recovery re-reads that much before its
checkpoint). A refused change is logged at error level and retried on every backlog
measurement, so it takes effect as soon as the relay has caught up.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from infra.mongo import MongoClient, outbox_ttl_seconds, set_outbox_ttl
from infra.settings import MongoSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TtlDecision:
    """Whether to set the TTL now, and why not when not."""

    apply: bool
    refusal: str | None = None


def decide_ttl(
    *,
    wanted_s: int,
    current_s: int | None,
    oldest_unpublished_age_s: float | None,
    margin_s: float,
) -> TtlDecision:
    """Set `wanted_s` unless it is already set, or it would delete an unpublished record.

    Growing the TTL (or keeping records forever, `current_s` None, a while longer) is
    always safe; creating or shrinking it is safe only when the oldest unpublished record
    is younger than `wanted_s - margin_s`. An unknown age (not measured yet) is unsafe.
    """
    if current_s == wanted_s:
        return TtlDecision(apply=False)
    if current_s is not None and wanted_s > current_s:
        return TtlDecision(apply=True)
    if oldest_unpublished_age_s is None:
        return TtlDecision(apply=False, refusal="the oldest unpublished record is not known yet")
    if oldest_unpublished_age_s + margin_s >= wanted_s:
        return TtlDecision(
            apply=False,
            refusal=(
                f"the oldest unpublished outbox record is {oldest_unpublished_age_s:.0f}s old; "
                f"a TTL of {wanted_s}s (minus the {margin_s:.0f}s recovery margin) would "
                "delete it before it is published"
            ),
        )
    return TtlDecision(apply=True)


class OutboxRetention:
    """Keeps the outbox TTL at the setting once doing so deletes nothing unpublished."""

    def __init__(self, client: MongoClient, settings: MongoSettings, *, margin_s: float) -> None:
        self._client = client
        self._settings = settings
        self._margin_s = margin_s
        self.wanted_s = int(settings.outbox_ttl_days * 86400)
        self.settled = False  # the TTL is the setting: nothing left to do in this process
        self._refused: tuple[int, int | None] | None = None  # (wanted, current) logged

    async def apply(self, oldest_unpublished_age_s: float | None) -> None:
        """Set the TTL if it differs and it is safe; a refusal is logged once per TTL pair."""
        if self.settled:
            return
        current = await outbox_ttl_seconds(self._client, self._settings)
        decision = decide_ttl(
            wanted_s=self.wanted_s,
            current_s=current,
            oldest_unpublished_age_s=oldest_unpublished_age_s,
            margin_s=self._margin_s,
        )
        if decision.refusal is not None:
            logged = (self.wanted_s, current)
            if oldest_unpublished_age_s is not None and self._refused != logged:
                self._refused = logged
                log.error(
                    "outbox_ttl_change_refused",
                    wanted_seconds=self.wanted_s,
                    current_seconds=current,
                    reason=decision.refusal,
                )
            return
        if decision.apply:
            await set_outbox_ttl(self._client, self._settings, self.wanted_s)
            log.info("outbox_ttl_set", seconds=self.wanted_s, previous_seconds=current)
        self.settled = True
