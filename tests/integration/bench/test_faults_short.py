"""The fault harness in its short CI configuration: kills and restarts under write load."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.scenarios import kills, run_faults


@pytest.mark.slow
@pytest.mark.integration
async def test_no_event_is_lost_duplicated_or_left_unindexed_across_kills_and_restarts(
    tmp_path: Path,
) -> None:
    """Relay/indexer SIGKILLs, a second relay, Kafka+ES and MongoDB restarts under load.

    Afterwards every outbox record is in Kafka exactly once (read_committed, by ce_id), each
    document's versions grow along its partition, and Elasticsearch holds MongoDB's ids,
    versions and tombstones.
    """
    config = kills(short=True)

    result = await run_faults(config, tmp_path)

    assert result.load.committed >= config.min_writes
    assert result.faults["kill_relay"] + result.faults["kill_indexer"] >= config.kills
    assert result.faults["restart_kafka_es"] == config.kafka_es_restarts
    assert result.faults["restart_mongo"] == config.mongo_restarts
    assert result.audit.outbox_records >= result.load.committed
    assert (result.audit.lost, result.audit.duplicated, result.audit.drift.total) == (0, 0, 0), (
        "\n".join([result.summary(), *result.audit.details(), *result.log_excerpts])
    )
    assert result.audit.misordered == 0, result.summary()
