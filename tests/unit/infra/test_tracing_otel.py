"""OpenTelemetry spans: off by default and free; on, the API's span parents the stored trace."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Receive, Scope, Send

from api.metrics import ApiMetrics
from api.middleware import RequestMiddleware
from infra.tracing import Tracing, configure_tracing

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


def test_tracing_is_a_no_op_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    tracing = configure_tracing("test")
    assert not tracing.enabled
    with tracing.span("work", parent=CALLER) as span:
        assert span is None


def test_a_span_continues_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing = configure_tracing("test", exporter=exporter)
    with tracing.span("work", parent=CALLER, attributes={"n": 1}) as span:
        assert span is not None
        assert span.trace_id == CALLER_TRACE
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{finished.context.span_id:016x}" == span.span_id


async def test_the_api_request_span_is_the_parent_the_write_stores() -> None:
    """What the route sees as `traceparent` (and stores in the outbox) is the API's span."""
    exporter = InMemorySpanExporter()
    seen: dict[str, str] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["traceparent"] = scope["state"]["traceparent"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = RequestMiddleware(app, ApiMetrics(), configure_tracing("api", exporter=exporter))
    scope: Scope = {
        "type": "http",
        "method": "PUT",
        "path": "/v1/collections/c/documents/d",
        "headers": [(b"traceparent", CALLER.encode())],
        "query_string": b"",
    }
    sent: list[object] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        sent.append(message)

    await middleware(scope, receive, send)  # type: ignore[arg-type]
    (span,) = exporter.get_finished_spans()
    assert seen["traceparent"] == f"00-{CALLER_TRACE}-{span.context.span_id:016x}-01"
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"


def test_a_default_tracing_costs_one_shared_null_context() -> None:
    tracing = Tracing()
    assert tracing.span("a", parent=None) is tracing.span("b", parent=CALLER)


def test_a_recorded_span_hangs_under_the_records_trace_with_its_times() -> None:
    exporter = InMemorySpanExporter()
    tracing = configure_tracing("indexer", exporter=exporter)
    tracing.record_span(
        "outbox.index", parent=CALLER, start_ns=1_000, end_ns=5_000, attributes={"v": 2}
    )
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE
    assert (span.start_time, span.end_time) == (1_000, 5_000)
    assert span.attributes == {"v": 2}
