"""W3C trace context, and OpenTelemetry spans when configured (free when not).

Every stage carries the write request's `traceparent`: the API stores it in the outbox
record, the relay sends it as `ce_traceparent`, the indexer logs its trace id. With the
`otel` extra installed and `OTEL_EXPORTER_OTLP_ENDPOINT` set (the standard OpenTelemetry
variables configure the exporter), each stage also records spans: the API's request span
becomes the record's parent, and the relay's publish and the indexer's index spans are
its children, so one trace shows API → relay → indexer. Without both, `Tracing.span` is a
shared no-op context and nothing is imported.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def parse(cls, header: str | None) -> TraceContext | None:
        """The caller's context, or None if the header is absent or malformed."""
        if header is None:
            return None
        m = _TRACEPARENT_RE.fullmatch(header.strip())
        if m is None:
            return None
        trace_id, span_id, flags = m.groups()
        if trace_id == "0" * 32 or span_id == "0" * 16:
            return None
        return cls(trace_id, span_id, flags)

    def child(self) -> TraceContext:
        """This service's span within the caller's trace."""
        return TraceContext(self.trace_id, new_span_id(), self.flags)


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace() -> TraceContext:
    return TraceContext(secrets.token_hex(16), new_span_id(), "01")


def trace_for_request(header: str | None) -> TraceContext:
    """A span of the caller's trace if it sent a valid `traceparent`, else a new trace."""
    parent = TraceContext.parse(header)
    return parent.child() if parent else new_trace()


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a valid `traceparent`, else None."""
    context = TraceContext.parse(traceparent)
    return context.trace_id if context else None


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


class Tracing:
    """OpenTelemetry spans around units of work, or nothing at all."""

    def __init__(self, tracer: Any = None) -> None:
        self._tracer = tracer

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(
        self, name: str, *, parent: str | None, attributes: dict[str, str | int] | None = None
    ) -> contextlib.AbstractContextManager[TraceContext | None]:
        """A span under `parent` (a traceparent) yielding its own context; a no-op if off."""
        if self._tracer is None:
            return _NO_SPAN
        return self._span(name, parent, attributes or {})

    def record_span(
        self,
        name: str,
        *,
        parent: str | None,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, str | int] | None = None,
    ) -> None:
        """A finished span under `parent`, for work measured per batch but traced per event."""
        if self._tracer is None:
            return
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415 - optional extra
            TraceContextTextMapPropagator,
        )

        context = TraceContextTextMapPropagator().extract({"traceparent": parent or ""})
        span = self._tracer.start_span(
            name, context=context, attributes=attributes or {}, start_time=start_ns
        )
        span.end(end_time=end_ns)

    @contextlib.contextmanager
    def _span(
        self, name: str, parent: str | None, attributes: dict[str, str | int]
    ) -> Iterator[TraceContext | None]:
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415 - optional extra
            TraceContextTextMapPropagator,
        )

        context = TraceContextTextMapPropagator().extract({"traceparent": parent or ""})
        with self._tracer.start_as_current_span(
            name, context=context, attributes=attributes
        ) as span:
            span_context = span.get_span_context()
            yield TraceContext(
                f"{span_context.trace_id:032x}",
                f"{span_context.span_id:016x}",
                f"{int(span_context.trace_flags):02x}",
            )


def configure_tracing(service: str, *, exporter: Any = None) -> Tracing:
    """Spans for `service` when an exporter is given or OTLP is configured; else a no-op."""
    if exporter is None and not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return Tracing()
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional extra
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
    except ImportError:
        log.warning("tracing_disabled", reason="install outbox-pipeline[otel] for OTLP export")
        return Tracing()
    provider = TracerProvider(resource=Resource.create({"service.name": f"outbox-{service}"}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    log.info("tracing_enabled", service=service)
    return Tracing(provider.get_tracer("outbox-pipeline"))
