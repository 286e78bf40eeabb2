"""W3C trace context (`traceparent`): parse the caller's, or start a new trace."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

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
