"""W3C traceparent handling (no servers)."""

from __future__ import annotations

import pytest

from infra.tracing import TraceContext, trace_for_request

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_parsed() -> None:
    ctx = TraceContext.parse(VALID)
    assert ctx == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert ctx.traceparent == VALID


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        VALID + "-extra",
    ],
)
def test_malformed_traceparents_are_ignored(header: str) -> None:
    assert TraceContext.parse(header) is None


def test_a_request_joins_the_callers_trace_with_its_own_span() -> None:
    ctx = trace_for_request(VALID)
    assert ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx.span_id != "00f067aa0ba902b7"
    assert TraceContext.parse(ctx.traceparent) == ctx


@pytest.mark.parametrize("header", [None, "garbage"])
def test_without_a_valid_traceparent_a_new_trace_starts(header: str | None) -> None:
    first, second = trace_for_request(header), trace_for_request(header)
    assert TraceContext.parse(first.traceparent) == first
    assert first.trace_id != second.trace_id
