"""The gRPC auth server: `AuthService`, the standard health service and reflection.

TLS when `OUTBOX_AUTH_TLS_CERT`/`_KEY` are set (mutual TLS with `OUTBOX_AUTH_TLS_CLIENT_CA`);
reflection unless OUTBOX_ENV=prod (or as `OUTBOX_AUTH_REFLECTION` says). This is the only
service that reads the token signing secret, and it refuses a weak one in prod.

`serve(settings)` runs until cancelled (`outbox auth`, `outbox dev`); `start_server`
starts the same server in the running event loop and returns a handle (tests use it).
Health reports NOT_SERVING until MongoDB answers and the indexes exist, then SERVING;
a background check flips it back while MongoDB stops answering. `serve` also answers
`/healthz`, `/readyz` and `/metrics` over HTTP on `auth.metrics_host:auth.metrics_port`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from auth_grpc.accounts import AccountService
from auth_grpc.login_throttle import MongoLoginThrottle
from auth_grpc.metrics import AuthMetrics
from auth_grpc.passwords import PasswordHasher
from auth_grpc.servicer import AuthServicer
from auth_grpc.store import MongoUserStore
from infra.errors import RetriableError
from infra.health import HealthServer, service_registry
from infra.mongo import MongoClient, mongo_client, ping
from infra.retry import retrying
from infra.settings import AuthSettings, ConfigurationError, Settings, read_pem
from protos.auth.v1 import auth_pb2, auth_pb2_grpc

log = structlog.get_logger(__name__)

AUTH_SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
HEALTH_CHECK_INTERVAL_S = 5.0
STOP_GRACE_S = 5.0


@dataclass
class AuthServer:
    """A started auth server: where it listens and how to stop it."""

    server: grpc.aio.Server
    port: int
    host: str
    client: MongoClient
    health: HealthServicer
    metrics: AuthMetrics
    # Why MongoDB is considered down (None while it answers); drives health and /readyz.
    mongo_problem: str | None = None
    _monitor: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def readiness(self) -> tuple[bool, str]:
        """For `/readyz`: ready while MongoDB answers."""
        if self.mongo_problem is not None:
            return False, self.mongo_problem
        return True, "ok"

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, close MongoDB."""
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.wait([self._monitor])  # waits without re-raising its cancellation
        await self.health.enter_graceful_shutdown()
        try:
            await self.server.stop(grace)
        finally:
            await self.client.close()
        log.info("auth_server_stopped", target=self.target)


async def start_server(
    settings: Settings,
    port: int | None = None,
    *,
    hasher: PasswordHasher | None = None,
    ready_timeout_s: float = 60.0,
    health_interval_s: float = HEALTH_CHECK_INTERVAL_S,
) -> AuthServer:
    """Start listening on `settings.auth.host` and `port` (default `settings.auth.port`,
    0 for a free one), wait until MongoDB answers, then report SERVING.

    `hasher` overrides the argon2 parameters (tests use a cheap profile);
    `health_interval_s` is how often MongoDB is pinged to keep the health status current.
    """
    token_secret = settings.auth.signing_secret(settings.env)  # before any I/O
    credentials = server_credentials(settings.auth)
    host = settings.auth.host
    client = mongo_client(settings.mongo, app_name="outbox-auth")
    store = MongoUserStore(client, settings.mongo)
    throttle = MongoLoginThrottle(
        client,
        settings.mongo,
        free_failures=settings.auth.login_free_failures,
        max_delay_s=settings.auth.login_max_delay_seconds,
    )
    hasher = hasher or PasswordHasher(max_concurrent=settings.auth.max_concurrent_hashes or None)
    accounts = AccountService(
        store,
        hasher,
        token_secret=token_secret,
        token_ttl_seconds=settings.auth.token_ttl_seconds,
        open_signup=settings.auth.open_signup,
        throttle=throttle,
    )
    metrics = AuthMetrics(service_registry())
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(accounts, metrics), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.reflection_enabled:
        reflection.enable_server_reflection(
            [AUTH_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    await _set_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        address = f"{host}:{settings.auth.port if port is None else port}"
        bound_port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
        await server.start()
        handle = AuthServer(
            server=server,
            port=bound_port,
            host=host,
            client=client,
            health=health,
            metrics=metrics,
        )
        async for attempt in retrying(
            "auth_mongo_ready", attempts=0, max_delay_s=ready_timeout_s, max_wait_s=2.0
        ):
            with attempt:
                await ping(client, settings.mongo)
                await store.ensure_indexes()
                await throttle.ensure_indexes()
        await hasher.prepare()
    except BaseException:
        await server.stop(None)
        await client.close()
        raise
    await _set_health(health, health_pb2.HealthCheckResponse.SERVING)
    handle._monitor = asyncio.create_task(_monitor_mongo(handle, settings, health_interval_s))
    log.info(
        "auth_server_started",
        target=handle.target,
        tls=credentials is not None,
        mutual_tls=settings.auth.tls_client_ca is not None,
        reflection=settings.reflection_enabled,
    )
    return handle


def server_credentials(settings: AuthSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from `tls_cert`/`tls_key` (and `tls_client_ca` for mutual TLS), or
    None for plaintext; `ConfigurationError` for a half-configured or unreadable set."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ConfigurationError(
                "OUTBOX_AUTH_TLS_CLIENT_CA needs OUTBOX_AUTH_TLS_CERT and OUTBOX_AUTH_TLS_KEY"
            )
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigurationError(
            "set both OUTBOX_AUTH_TLS_CERT and OUTBOX_AUTH_TLS_KEY, or neither"
        )
    client_ca = (
        read_pem(settings.tls_client_ca, "OUTBOX_AUTH_TLS_CLIENT_CA")
        if settings.tls_client_ca is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [
            (
                read_pem(settings.tls_key, "OUTBOX_AUTH_TLS_KEY"),
                read_pem(settings.tls_cert, "OUTBOX_AUTH_TLS_CERT"),
            )
        ],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve(settings: Settings) -> None:
    """Run the auth service until cancelled, then stop gracefully."""
    handle = await start_server(settings)
    try:
        async with HealthServer(
            settings.auth.metrics_host,
            settings.auth.metrics_port,
            handle.readiness,
            registry=handle.metrics.registry,
        ):
            # Not `server.wait_for_termination()`: cancelling it cancels the future a graceful
            # `server.stop()` waits on, which turns the grace period into an abrupt stop.
            await asyncio.Event().wait()
    finally:
        await handle.stop()


async def _set_health(
    health: HealthServicer, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
) -> None:
    for service in ("", AUTH_SERVICE_NAME):
        await health.set(service, status)


async def _monitor_mongo(handle: AuthServer, settings: Settings, interval_s: float) -> None:
    """Keep the health status in step with MongoDB: NOT_SERVING while it does not answer."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await ping(handle.client, settings.mongo)
        except RetriableError as e:
            if handle.mongo_problem is None:
                log.warning("auth_health_changed", status="NOT_SERVING", error=str(e))
                await _set_health(handle.health, health_pb2.HealthCheckResponse.NOT_SERVING)
            handle.mongo_problem = str(e)
            continue
        if handle.mongo_problem is not None:
            log.info("auth_health_changed", status="SERVING")
            await _set_health(handle.health, health_pb2.HealthCheckResponse.SERVING)
            handle.mongo_problem = None
