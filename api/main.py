"""The REST API application: `create_app(settings)` and `serve(settings)` (uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Generator
from datetime import timedelta

import structlog
import uvicorn
from fastapi import FastAPI

from api.auth_client import GrpcAuthClient, auth_channel, channel_credentials
from api.body_limit import BodyLimitMiddleware
from api.collection_limit import CollectionLimit
from api.consistency import ConsistencyTokens
from api.document_store import MongoDocumentStore
from api.metrics import ApiMetrics
from api.middleware import RequestMiddleware
from api.openapi import install_openapi
from api.problems import install_problem_handlers
from api.rate_limit import TokenBuckets, parse_networks
from api.routes import auth, documents, health, operator, search, status_page
from infra.elastic import elastic_client
from infra.errors import FatalError
from infra.health import service_registry
from infra.index_limits import index_limits
from infra.mongo import ensure_outbox_indexes, mongo_client
from infra.settings import (
    DEV_CONSISTENCY_KEY,
    ApiSettings,
    ConfigurationError,
    Settings,
    read_pem,
)
from infra.tracing import Tracing, configure_tracing
from operator_tools.jobs import JOBS_COLLECTION, JobRunner, MongoJobStore

log = structlog.get_logger(__name__)


def create_app(settings: Settings, tracing: Tracing | None = None) -> FastAPI:
    """The app; its lifespan opens and closes the MongoDB, gRPC and Elasticsearch clients."""
    consistency_key = settings.api.consistency_key.get_secret_value()
    if settings.env == "prod" and consistency_key in {"", DEV_CONSISTENCY_KEY}:
        # Checked here, not in Settings: only the API needs this key, so only it must hold it.
        raise ConfigurationError(
            "OUTBOX_API_CONSISTENCY_KEY is not set (the built-in development value is refused "
            "when OUTBOX_ENV=prod); generate one with `openssl rand -hex 32`"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mongo = mongo_client(settings.mongo, app_name="outbox-api")
        channel = auth_channel(settings.auth)
        es = elastic_client(settings.es)
        try:
            store = MongoDocumentStore(
                mongo,
                settings.mongo,
                max_document_bytes=settings.api.max_body_bytes,
                index_limits=functools.partial(index_limits, settings.es),
                write_timeout_s=settings.api.write_timeout_s,
                idempotency_ttl=timedelta(hours=settings.api.idempotency_ttl_hours),
            )
            await ensure_outbox_indexes(mongo, settings.mongo)
            await store.ensure_indexes()
            app.state.mongo = mongo
            app.state.auth_channel = channel
            app.state.auth_client = GrpcAuthClient(channel, settings.auth)
            app.state.es = es
            app.state.document_store = store
            app.state.collection_limit = CollectionLimit(
                mongo[settings.mongo.database], settings.mongo, settings.api.max_collections
            )
            job_store = MongoJobStore(mongo[settings.mongo.database][JOBS_COLLECTION])
            await job_store.ensure_indexes()
            app.state.jobs = JobRunner(job_store)
            log.info("api_started", auth_target=settings.auth.target)
            yield
        finally:
            # Running operator jobs are cancelled and recorded as interrupted while the
            # clients they use are still open (operator_tools/jobs.py).
            if hasattr(app.state, "jobs"):
                await app.state.jobs.close()
            await es.close()
            await channel.close(grace=None)
            await mongo.close()
            log.info("api_stopped")

    app = FastAPI(
        title="outbox-pipeline",
        summary="Transactional writes to MongoDB, searched through Elasticsearch.",
        version="0.1.0",
        lifespan=lifespan,
        # Off in prod unless OUTBOX_API_DOCS=true: the schema maps the attack surface.
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics(service_registry())
    app.state.consistency_tokens = ConsistencyTokens(consistency_key.encode())
    app.state.trusted_proxies = parse_networks(settings.api.trusted_proxies)
    app.state.login_failures = TokenBuckets(
        settings.api.login_failures_per_minute / 60, burst=settings.api.login_failures_per_minute
    )
    app.state.search_limits = TokenBuckets(
        settings.api.search_rate_per_second, burst=2 * settings.api.search_rate_per_second
    )
    install_problem_handlers(app)
    install_openapi(app, settings)
    # Added last, so outermost: the limit applies before any route, parsing or auth; the
    # request middleware still logs and counts what it refused.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(
        RequestMiddleware,
        metrics=app.state.metrics,
        tracing=tracing or configure_tracing("api"),
    )
    app.include_router(auth.router)
    app.include_router(documents.router)
    app.include_router(search.router)
    app.include_router(operator.router)
    app.include_router(health.router)
    app.include_router(status_page.router)
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller cancels `serve()` to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def tls_files(settings: ApiSettings) -> tuple[str, str] | None:
    """(certificate, key) for HTTPS, None for plain HTTP; `ConfigurationError` if half set
    or unreadable."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigurationError("set both OUTBOX_API_TLS_CERT and OUTBOX_API_TLS_KEY, or neither")
    read_pem(settings.tls_cert, "OUTBOX_API_TLS_CERT")  # a clear error before uvicorn's
    read_pem(settings.tls_key, "OUTBOX_API_TLS_KEY")
    return settings.tls_cert, settings.tls_key


async def serve(settings: Settings) -> None:
    """Run the API until cancelled; on cancel, finish in-flight requests and the lifespan."""
    tls = tls_files(settings.api)
    channel_credentials(settings.auth)  # a ConfigurationError now, not a failed lifespan
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        log_config=None,
        access_log=False,  # RequestMiddleware logs one line per request
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
    if server.started is False:
        raise FatalError(f"the API did not start on {settings.api.host}:{settings.api.port}")
