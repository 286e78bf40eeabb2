"""Prometheus metrics of the auth service, in a registry the server owns and passes down."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class AuthMetrics:
    """Calls by RPC and gRPC status code, and their latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "outbox_auth_requests",
            "Auth gRPC calls by method and status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "outbox_auth_request_seconds",
            "Auth gRPC call duration.",
            ["rpc"],
            registry=self.registry,
        )

    def observe(self, rpc: str, code: str, duration_s: float) -> None:
        self.requests.labels(rpc=rpc, code=code).inc()
        self.latency.labels(rpc=rpc).observe(duration_s)
