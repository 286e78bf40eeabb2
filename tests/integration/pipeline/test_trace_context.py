"""A request's W3C trace context travels API → outbox → Kafka → indexer log, unchanged."""

from __future__ import annotations

from structlog.testing import capture_logs

from infra.envelope import CE_TRACEPARENT
from tests.fixtures.indexer import wait_until
from tests.fixtures.pipeline import Pipeline
from tests.fixtures.relay import read_events

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_a_requests_trace_id_reaches_kafka_and_the_indexers_log(
    pipeline: Pipeline,
) -> None:
    """The trace id the client sent is in the outbox record, `ce_traceparent` and the log."""
    with capture_logs() as logs:
        response = await pipeline.api.client.put(
            "/v1/collections/books/documents/traced",
            json={"title": "Traced"},
            headers={**pipeline.headers, "traceparent": CALLER},
        )
        assert response.status_code == 201, response.text
        event_id = response.json()["event_id"]
        record = await pipeline.api.db[pipeline.settings.mongo.outbox_collection].find_one(
            {"_id": event_id}
        )
        assert record is not None
        assert record["traceparent"].split("-")[1] == TRACE_ID

        await pipeline.start_stages()
        (event,) = await read_events(pipeline.settings, ["books"])
        assert event.header(CE_TRACEPARENT) == record["traceparent"]

        def indexed_line() -> list[dict[str, object]]:
            return [
                line
                for line in logs
                if line.get("event_id") == event_id
                and line.get("trace_id") == TRACE_ID
                and line.get("log_level") == "info"
                and "index" in str(line.get("event"))
            ]

        async def logged() -> bool:
            return bool(indexed_line())

        await wait_until(logged, timeout_s=20, interval_s=0.1, what="indexer log line")
    (line, *_) = indexed_line()
    assert line["document_id"] == "traced"
    assert line["collection"] == "books"
    assert "document" not in line  # payloads are never logged
