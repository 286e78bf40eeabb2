"""One pure-ASGI middleware per request: trace context, one log line, metrics, the last-resort
error mapping (a dependency outage → 503, anything else → 500, never a traceback to the client).
"""

from __future__ import annotations

import re
import time
from typing import Any

import grpc
import structlog
from elastic_transport import TransportError
from elasticsearch import ApiError
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import ApiMetrics
from api.problems import ProblemError, problem_response, service_unavailable
from infra.elastic import map_elastic_error
from infra.errors import RetriableError, ServerUnreachableError
from infra.mongo import map_mongo_error
from infra.tracing import TraceContext, Tracing, trace_for_request

TRACEPARENT = "traceparent"
# A server URI in an error message may carry credentials (mongodb://user:pass@host).
_CREDENTIALS_RE = re.compile(r"//[^/@\s]+@")

log = structlog.get_logger("api.request")


def dependency_outage(exc: BaseException) -> str | None:
    """A description if `exc` means a server we depend on is down or overloaded, else None."""
    if isinstance(exc, ServerUnreachableError):
        return _CREDENTIALS_RE.sub("//***@", str(exc))
    if isinstance(exc, PyMongoError) and isinstance(map_mongo_error(exc), RetriableError):
        return "MongoDB is unavailable, try again"
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }:
        return "the auth service is unavailable, try again"
    if isinstance(exc, TransportError | ApiError) and isinstance(
        map_elastic_error(exc), RetriableError
    ):
        return "Elasticsearch is unavailable, try again"
    return None


class RequestMiddleware:
    """Bind `trace_id`, echo `traceparent`, log `request_handled`, turn crashes into problems."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing or Tracing()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        caller = request.headers.get(TRACEPARENT)
        # With OpenTelemetry on, the request span is the outbox record's parent.
        with self.tracing.span(
            "http_request", parent=caller, attributes={"method": scope["method"]}
        ) as span:
            await self._handle(scope, receive, send, request, span or trace_for_request(caller))

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request: Request, trace: TraceContext
    ) -> None:
        started = time.perf_counter()
        scope.setdefault("state", {})["traceparent"] = trace.traceparent
        status = 500
        response_started = False

        async def send_with_trace(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((TRACEPARENT.encode(), trace.traceparent.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(trace_id=trace.trace_id):
            try:
                await self.app(scope, receive, send_with_trace)
            except Exception as exc:
                if response_started:
                    log.exception("request_failed", method=scope["method"], after_response=True)
                    raise
                problem = self._problem_for(exc, scope)
                await problem_response(request, problem)(scope, receive, send_with_trace)
            finally:
                route = _route_template(scope)
                duration = time.perf_counter() - started
                self.metrics.observe(scope["method"], route, status, duration)
                log.info(
                    "request_handled",
                    method=scope["method"],
                    path=route,
                    status=status,
                    duration_ms=round(duration * 1000, 2),
                )

    @staticmethod
    def _problem_for(exc: Exception, scope: Scope) -> ProblemError:
        outage = dependency_outage(exc)
        if outage is not None:
            log.warning("dependency_unavailable", error=repr(exc), path=_route_template(scope))
            return service_unavailable(outage)
        log.error(
            "request_failed", method=scope["method"], path=_route_template(scope), exc_info=exc
        )
        return ProblemError(500, "an unexpected error occurred; it has been logged")


def _route_template(scope: Scope) -> str:
    """The route's path template (`/v1/collections/{c}/documents/{id}`), never raw ids."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"
