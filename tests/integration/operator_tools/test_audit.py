"""`outbox audit` against the whole pipeline: injected duplicates, gaps, misorders and drift."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from uuid import uuid4

from confluent_kafka import Producer

from infra.envelope import CE_ID, CE_TIME, EventType, OutboxRecord, new_event_id, utc_now
from infra.index_layout import source_for
from infra.kafka import ensure_topics
from operator_tools.audit import audit, audit_when_idle, load_late_records, relay_position
from operator_tools.audit_rules import Judging
from operator_tools.audit_store import AuditStore, MessageRow
from operator_tools.status import status
from outbox_relay.checkpoint import Checkpoint, CheckpointMode
from tests.fixtures.indexer import KafkaWriter, wait_until
from tests.fixtures.pipeline import CliResult, Pipeline
from tests.fixtures.relay import fast_relay, read_events


async def _history(pipeline: Pipeline, collection: str = "books", n: int = 9) -> int:
    """Creates, updates and a delete; returns how many writes (outbox records) it made."""
    for i in range(n):
        await pipeline.put(collection, f"{collection[0]}{i}", {"title": f"t{i}"})
    for i in range(0, n, 3):
        await pipeline.put(collection, f"{collection[0]}{i}", {"title": f"t{i} v2"})
    await pipeline.delete(collection, f"{collection[0]}1")
    return n + len(range(0, n, 3)) + 1


async def _idle(pipeline: Pipeline) -> None:
    """Relay and indexer have caught up, offsets committed: nothing is left to judge later."""

    async def idle() -> bool:
        report = await status(pipeline.clients)
        return report.backlog == 0 and report.consumer_lag_total == 0

    await wait_until(idle, timeout_s=30, interval_s=0.2, what="pipeline idle")


async def _running(pipeline: Pipeline, *collections: str) -> int:
    """History in `collections`, the pipeline started and idle; returns the records written."""
    written = 0
    for c in collections:
        written += await _history(pipeline, c)
    await pipeline.start_stages()
    for c in collections:
        await pipeline.settled(c)
    await _idle(pipeline)
    return written


async def _audit(pipeline: Pipeline, *args: str) -> tuple[CliResult, dict[str, Any]]:
    result = await pipeline.cli("audit", "--json", *args)
    assert result.code in (0, 1), result
    return result, result.json()


def _counts(report: dict[str, Any]) -> tuple[int, int, int, int]:
    return (report["lost"], report["duplicated"], report["misordered"], report["drift"])


async def test_a_clean_pipeline_passes_the_audit(pipeline: Pipeline) -> None:
    """Every record once in Kafka, in order, indexed at its newest version: exit 0."""
    written = await _running(pipeline, "books", "films")

    result, report = await _audit(pipeline)

    assert result.code == 0, result.stdout
    assert report["ok"] is True
    assert _counts(report) == (0, 0, 0, 0)
    assert report["replayed"] == 0
    assert report["not_judged"] == {"pending": 0, "unindexed": 0}
    assert report["read"]["outbox_records"] == written
    assert report["read"]["kafka_messages"] == written
    assert report["read"]["documents"] == 18
    assert report["window"]["collection"] is None

    human = await pipeline.cli("audit")
    assert human.code == 0, human.stdout + human.stderr
    assert "lost=0 duplicated=0 misordered=0 drift=0 replayed=0" in human.stdout
    assert "reading the outbox" in human.stderr  # the progress goes to stderr
    assert human.stdout.rstrip().endswith("ok")


async def test_a_copy_of_a_published_event_from_another_producer_is_a_duplicate(
    pipeline: Pipeline,
) -> None:
    """Same ce_id, no ce_replayed marker, written by a plain producer: duplicated=1, exit 1."""
    await _running(pipeline, "books", "films")
    published = await read_events(pipeline.settings, ["books"])
    victim = published[3]
    writer = KafkaWriter(pipeline.settings)
    await writer.send_raw([(victim.topic, victim.key, victim.value, victim.headers)])

    result, report = await _audit(pipeline)

    assert result.code == 1
    assert _counts(report) == (0, 1, 0, 0)
    assert report["breakdown"]["duplicated"] == {"extra_copies": 1, "unknown_events": 0}
    [example] = report["examples"]["duplicated"]
    assert example["event_id"] == victim.ce_id
    assert len(example["copies"]) == 2

    human = await pipeline.cli("audit")
    assert human.code == 1
    assert "lost=0 duplicated=1 misordered=0 drift=0 replayed=0" in human.stdout
    assert victim.ce_id in human.stdout
    assert "FAIL" in human.stdout

    narrowed, films = await _audit(pipeline, "--collection", "films")
    assert narrowed.code == 0, narrowed.stdout
    assert films["window"]["collection"] == "films"
    assert films["read"]["outbox_records"] == 13


async def test_an_event_no_outbox_record_backs_is_a_duplicate_unless_older_than_the_window(
    pipeline: Pipeline,
) -> None:
    """A foreign event in an event topic counts; one stamped before the window does not."""
    await _running(pipeline, "books")
    writer = KafkaWriter(pipeline.settings)
    now = utc_now()
    stranger = OutboxRecord(new_event_id(), "books", "b2", 9, EventType.UPDATED, {"x": 1}, now)
    ancient = OutboxRecord(
        new_event_id(), "books", "b4", 1, EventType.CREATED, {"x": 2}, now - timedelta(days=30)
    )
    await writer.send_records([stranger, ancient])

    async def applied() -> bool:  # the indexer takes the stranger's version 9 at face value
        return (await pipeline.es_state("books"))["b2"] == (9, False)

    await wait_until(applied, timeout_s=20, interval_s=0.1, what="stranger indexed")
    result, report = await _audit(pipeline)

    assert result.code == 1
    assert _counts(report) == (0, 1, 0, 1)
    assert report["breakdown"]["duplicated"] == {"extra_copies": 0, "unknown_events": 1}
    assert [e["event_id"] for e in report["examples"]["duplicated"]] == [stranger.event_id]
    assert report["outside_window"] == 1
    # What it did to the index: version 9, which MongoDB never had.
    [drift] = report["examples"]["drift"]
    assert (drift["document_id"], drift["kind"], drift["elasticsearch"]) == ("b2", "ahead", "v9")
    assert drift["mongodb"] == "v1"


async def test_a_record_no_relay_publishes_is_lost_once_past_the_grace(
    pipeline: Pipeline,
) -> None:
    """A relay configured for `books` only: `films` records never reach Kafka."""
    films = await _history(pipeline, "films")
    await _history(pipeline, "books")  # after films: the relay's position passes them
    pipeline.settings = fast_relay(pipeline.settings, collections=["books"])
    pipeline.start_relay()
    pipeline.start_indexer()
    await pipeline.settled("books")

    result, report = await _audit(pipeline, "--grace", "0")

    assert result.code == 1
    assert report["lost"] == films
    assert {e["collection"] for e in report["examples"]["lost"]} == {"films"}
    # Their documents are not indexed either, and never will be: drift too.
    assert report["breakdown"]["drift"]["missing"] == 9  # the deleted one's tombstone too
    assert report["breakdown"]["drift"]["stale"] == 0

    # Within the default grace (120 s) they may still be on their way: pending, not lost.
    lenient, report = await _audit(pipeline, "--collection", "films")
    assert lenient.code == 0, lenient.stdout
    assert report["lost"] == 0
    assert report["not_judged"]["pending"] == films


async def test_records_past_the_relays_position_and_unindexed_documents_are_not_judged(
    pipeline: Pipeline,
) -> None:
    """On a live pipeline what is still on its way is neither lost nor drift."""
    await _running(pipeline, "books")
    await pipeline.stop_indexer()
    await pipeline.put("books", "b2", {"title": "published, not indexed"})
    await wait_until(
        lambda: _backlog_is(pipeline, 0), timeout_s=20, interval_s=0.1, what="published"
    )
    await pipeline.stop_relay()
    await pipeline.put("books", "b5", {"title": "not even published"})

    report = await audit(pipeline.clients, grace=timedelta(0))

    assert (report.lost, report.duplicated, report.misordered, report.drift.total) == (0, 0, 0, 0)
    assert (report.pending, report.unindexed) == (1, 2)
    assert report.ok

    # Once the pipeline is expected to be idle, the same state is a failure.
    settled = await audit(pipeline.clients, settled=True)
    assert (settled.lost, settled.drift.total) == (1, 2)
    assert not settled.ok


async def _backlog_is(pipeline: Pipeline, n: int) -> bool:
    return (await status(pipeline.clients)).backlog == n


async def test_a_document_published_out_of_order_is_misordered(pipeline: Pipeline) -> None:
    """A relay that put a document's version 2 before its version 1 on the partition."""
    now = utc_now()
    v1 = OutboxRecord(new_event_id(), "maps", "m1", 1, EventType.CREATED, {"n": 1}, now)
    v2 = OutboxRecord(new_event_id(), "maps", "m1", 2, EventType.UPDATED, {"n": 2}, now)
    await pipeline.api.outbox.insert_many([v1.to_mongo(), v2.to_mongo()])
    await KafkaWriter(pipeline.settings).send_records([v2, v1])

    result, report = await _audit(pipeline, "--collection", "maps")

    assert result.code == 1
    assert _counts(report) == (0, 0, 1, 0)
    [example] = report["examples"]["misordered"]
    assert (example["event_id"], example["version"]) == (v1.event_id, 1)
    assert "after version 2" in example["why"]


async def test_index_entries_changed_behind_the_pipelines_back_are_drift(
    pipeline: Pipeline,
) -> None:
    """Overwritten (internal version), same version with another body, and removed."""
    await _running(pipeline, "books")
    es, alias = pipeline.es, pipeline.settings.es.alias_for("books")
    await es.index(index=alias, id="b3", document={"id": "b3", "document": {"title": "hacked"}})
    record = OutboxRecord("forged", "books", "b4", 1, EventType.CREATED, {"title": "x"}, utc_now())
    await es.index(
        index=alias, id="b4", document=source_for(record), version=1, version_type="external_gte"
    )
    await es.delete(index=alias, id="b5")
    await es.indices.refresh(index=alias)

    result, report = await _audit(pipeline)

    assert result.code == 1
    assert _counts(report) == (0, 0, 0, 3)
    assert report["breakdown"]["drift"] == {
        "missing": 1,
        "stale": 0,
        "changed": 1,
        "ahead": 1,
        "extra": 0,
    }
    kinds = {e["document_id"]: e["kind"] for e in report["examples"]["drift"]}
    assert kinds == {"b3": "ahead", "b4": "changed", "b5": "missing"}


async def test_a_replay_counts_as_replayed_never_as_duplicated(pipeline: Pipeline) -> None:
    written = await _running(pipeline, "books")

    replay = await pipeline.cli("replay", "--collection", "books", "--json")
    assert replay.code == 0, replay.stderr
    result, report = await _audit(pipeline)

    assert result.code == 0, result.stdout
    assert _counts(report) == (0, 0, 0, 0)
    assert report["replayed"] == written
    assert report["read"]["kafka_messages"] == 2 * written


async def test_since_leaves_older_records_out_of_the_window(pipeline: Pipeline) -> None:
    """A record stamped two hours ago that never reached Kafka: lost, unless --since 1h."""
    await _running(pipeline, "books")
    await pipeline.stop_relay()
    old = OutboxRecord(
        new_event_id(), "maps", "m1", 1, EventType.CREATED, {"n": 1}, utc_now() - timedelta(hours=2)
    )
    await pipeline.api.outbox.insert_one(old.to_mongo())

    everything, report = await _audit(pipeline, "--collection", "maps")
    assert everything.code == 1
    assert report["lost"] == 1
    assert report["examples"]["lost"][0]["event_id"] == old.event_id

    recent, report = await _audit(pipeline, "--collection", "maps", "--since", "1h")
    assert recent.code == 0, recent.stdout
    assert report["read"]["outbox_records"] == 0

    books, _ = await _audit(pipeline, "--collection", "books", "--since", "1h")
    assert books.code == 0, books.stdout


async def test_bad_options_are_refused_before_any_server_is_asked(pipeline: Pipeline) -> None:
    bad_since = await pipeline.cli("audit", "--since", "yesterday")
    bad_collection = await pipeline.cli("audit", "--collection", "Not.A.Collection")

    assert bad_since.code == 2
    assert "not a duration" in bad_since.stderr
    assert bad_collection.code == 2


async def test_audit_when_idle_passes_a_settled_pipeline_and_reports_a_stuck_record(
    pipeline: Pipeline,
) -> None:
    """The fault harness's entry point: settled audits, waiting for the pipeline to go idle."""
    await _running(pipeline, "books")
    clean = await audit_when_idle(pipeline.settings, timeout_s=30, settle_s=1, interval_s=0.2)
    assert clean.ok, clean.details()
    assert clean.summary().startswith("lost=0 duplicated=0 drift=0 misordered=0")

    await pipeline.stop_relay()
    await pipeline.put("books", "b0", {"title": "stuck"})
    stuck = await audit_when_idle(pipeline.settings, timeout_s=30, settle_s=1, interval_s=0.2)
    assert not stuck.ok
    assert stuck.summary().startswith("lost=1 duplicated=0 drift=1 misordered=0")
    assert any(line.startswith("lost, e.g.") for line in stuck.details())


async def test_the_audit_reads_kafka_by_event_id_per_topic(pipeline: Pipeline) -> None:
    """An event copied into another collection's topic is a stranger there, not a copy."""
    await _running(pipeline, "books", "films")
    book = next(m for m in await read_events(pipeline.settings, ["books"]) if m.key == b"b2")
    films_topic = pipeline.settings.kafka.event_topic("films")
    await KafkaWriter(pipeline.settings).send_raw(
        [(films_topic, book.key, book.value, book.headers)]
    )

    result, report = await _audit(pipeline)

    assert result.code == 1
    assert report["breakdown"]["duplicated"] == {"extra_copies": 0, "unknown_events": 1}
    [example] = report["examples"]["duplicated"]
    assert example["event_id"] == book.header(CE_ID)
    assert example["where"].startswith(films_topic)
    assert example["time"] == book.header(CE_TIME)


async def test_a_record_committed_while_the_audit_reads_is_not_an_unknown_event(
    pipeline: Pipeline,
) -> None:
    """Its event reached Kafka after the outbox was read: it is looked up, not a stranger."""
    now = utc_now()
    late = OutboxRecord(new_event_id(), "maps", "m1", 1, EventType.CREATED, {"n": 1}, now)
    stranger = OutboxRecord(new_event_id(), "maps", "m2", 1, EventType.CREATED, {"n": 2}, now)
    judging = Judging(start=now - timedelta(hours=1), judged_until=now)
    topic = pipeline.settings.kafka.event_topic("maps")
    with AuditStore.temporary() as store:
        # The outbox was read before `late` committed; Kafka, read after, shows both.
        store.add_messages(
            [
                MessageRow(topic, 0, 0, 0, "m1", late.event_id, 1, False, now),
                MessageRow(topic, 0, 1, 0, "m2", stranger.event_id, 1, False, now),
            ]
        )
        await pipeline.api.outbox.insert_one(late.to_mongo())

        await load_late_records(pipeline.clients, store, judging, None)

        events = [(r.event_id, len(copies)) for r, copies in store.events()]
        assert events == [(late.event_id, 1)]
        assert [m.event_id for m in store.unknown_messages()] == [stranger.event_id]


async def test_a_recovering_relays_position_is_where_its_recovery_started(
    pipeline: Pipeline,
) -> None:
    """Recovery publishes in document order: a later checkpointed record proves nothing."""
    started_from = utc_now() - timedelta(minutes=10)
    later = OutboxRecord(new_event_id(), "maps", "m1", 1, EventType.CREATED, {"n": 1}, utc_now())
    await pipeline.api.outbox.insert_one(later.to_mongo())
    recovering = Checkpoint(
        relay=pipeline.settings.relay.name,
        mode=CheckpointMode.RECOVERING,
        recover_from=started_from,
        last_event_id=later.event_id,
    )
    writer = KafkaWriter(pipeline.settings)
    topic = pipeline.settings.kafka.checkpoint_topic
    await ensure_topics(pipeline.settings.kafka, {topic: {}})
    await writer.send_raw([(topic, recovering.kafka_key(), recovering.kafka_value(), [])])

    assert await relay_position(pipeline.clients) == started_from


async def test_audit_when_idle_waits_out_a_transaction_held_open_past_the_read_timeout(
    pipeline: Pipeline,
) -> None:
    """A relay restarting under load can hold a transaction open longer than one read waits:
    the harness's idle wait keeps auditing until it resolves instead of failing the run."""
    await _running(pipeline, "books")
    settings = pipeline.settings
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap, "transactional.id": f"{uuid4().hex}"}
    )
    await asyncio.to_thread(producer.init_transactions, 10)
    producer.begin_transaction()
    producer.produce(settings.kafka.event_topic("books"), key=b"x", value=b"not an event")
    await asyncio.to_thread(producer.flush, 10)

    waiting = asyncio.create_task(
        audit_when_idle(settings, timeout_s=60, settle_s=30, interval_s=0.2, read_timeout_s=0.5)
    )
    await asyncio.sleep(2.0)  # the fault itself: longer than a few reads' timeout
    assert not waiting.done(), waiting.result()
    await asyncio.to_thread(producer.abort_transaction, 10)
    report = await asyncio.wait_for(waiting, 60)

    assert report.ok, report.details()
