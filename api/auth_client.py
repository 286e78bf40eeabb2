"""The API's client of the gRPC auth service: Verify (with a short TTL cache) and Login.

`auth_channel` opens the channel: TLS when `OUTBOX_AUTH_TLS_CA` is set (the server is
verified against that CA), with a client certificate for mutual TLS when
`OUTBOX_AUTH_TLS_CLIENT_CERT`/`_KEY` are set; plaintext otherwise.

Every call has a deadline, so an unreachable auth service yields a 503 quickly, never a
hang. A token revoked elsewhere keeps working for at most `auth.verify_cache_seconds`
(at most 60 s); one revoked through this client (logout) stops at once here.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import grpc
import structlog

from api.problems import ProblemError, unauthorized
from api.rate_limit import retry_after
from infra.errors import ServerUnreachableError
from infra.settings import AuthSettings, ConfigurationError, read_pem
from protos.auth.v1 import auth_pb2, auth_pb2_grpc

VERIFY_TIMEOUT_S = 2.0
LOGIN_TIMEOUT_S = 5.0  # argon2id hashing on the server side takes a while
CACHE_MAX_ENTRIES = 10_000

ROLE_NAMES = {
    auth_pb2.ROLE_READER: "reader",
    auth_pb2.ROLE_WRITER: "writer",
    auth_pb2.ROLE_ADMIN: "admin",
}
WRITE_ROLES = frozenset({"writer", "admin"})

log = structlog.get_logger(__name__)


def channel_credentials(settings: AuthSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials for the channel to the auth service, None for plaintext;
    `ConfigurationError` for a half-configured or unreadable set."""
    client_pair = (settings.tls_client_cert, settings.tls_client_key)
    if settings.tls_ca is None:
        if client_pair != (None, None):
            raise ConfigurationError(
                "OUTBOX_AUTH_TLS_CLIENT_CERT/_KEY need OUTBOX_AUTH_TLS_CA (TLS to the auth service)"
            )
        return None
    if (client_pair[0] is None) != (client_pair[1] is None):
        raise ConfigurationError(
            "set both OUTBOX_AUTH_TLS_CLIENT_CERT and OUTBOX_AUTH_TLS_CLIENT_KEY, or neither"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(settings.tls_ca, "OUTBOX_AUTH_TLS_CA"),
        private_key=(
            read_pem(settings.tls_client_key, "OUTBOX_AUTH_TLS_CLIENT_KEY")
            if settings.tls_client_key is not None
            else None
        ),
        certificate_chain=(
            read_pem(settings.tls_client_cert, "OUTBOX_AUTH_TLS_CLIENT_CERT")
            if settings.tls_client_cert is not None
            else None
        ),
    )


def auth_channel(settings: AuthSettings) -> grpc.aio.Channel:
    """A channel to `settings.target`, over TLS when `tls_ca` is set."""
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(settings.target)
    return grpc.aio.secure_channel(settings.target, credentials)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token belongs to."""

    user_id: str
    username: str
    roles: frozenset[str]
    collections: frozenset[str] = frozenset()  # the roles apply only to these; empty: all

    @property
    def can_write(self) -> bool:
        return bool(self.roles & WRITE_ROLES)

    @property
    def is_admin(self) -> bool:
        """An admin of every collection (operator actions span them all)."""
        return "admin" in self.roles and not self.collections

    def covers(self, collection: str) -> bool:
        """Whether the principal's scope includes `collection`."""
        return not self.collections or collection in self.collections


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    token_type: str
    expires_in: int


class GrpcAuthClient:
    """Verify and Login over a `grpc.aio` channel the caller owns."""

    def __init__(self, channel: grpc.aio.Channel, settings: AuthSettings) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._target = settings.target
        self._ttl = settings.verify_cache_seconds
        # token digest → (monotonic expiry, principal); oldest first for eviction.
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        """The token's principal; `ProblemError` 401 if it is bad, expired or revoked."""
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._cache[key]
        try:
            reply = await self._stub.Verify(
                auth_pb2.VerifyRequest(token=token), timeout=VERIFY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            raise self._map_error(e, "verify") from e
        principal = Principal(
            user_id=reply.user_id,
            username=reply.username,
            roles=frozenset(ROLE_NAMES[r] for r in reply.roles if r in ROLE_NAMES),
            collections=frozenset(reply.collections),
        )
        if self._ttl > 0:
            # Never cache past the token's own expiry.
            lifetime = min(self._ttl, max(0.0, reply.expires_at - time.time()))
            self._cache[key] = (now + lifetime, principal)
            while len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return principal

    async def login(self, username: str, password: str) -> IssuedToken:
        """Exchange credentials for a token; `ProblemError` 401 on bad credentials."""
        try:
            reply = await self._stub.Login(
                auth_pb2.LoginRequest(username=username, password=password),
                timeout=LOGIN_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as e:
            raise self._map_error(e, "login") from e
        return IssuedToken(
            access_token=reply.access_token,
            token_type=reply.token_type or "bearer",
            expires_in=int(reply.expires_in),
        )

    async def revoke(self, token: str) -> None:
        """Revoke the token (logout); it stops working here at once, elsewhere within the
        other replicas' Verify cache."""
        self._cache.pop(hashlib.sha256(token.encode()).digest(), None)
        try:
            await self._stub.Revoke(auth_pb2.RevokeRequest(token=token), timeout=VERIFY_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise self._map_error(e, "revoke") from e

    def _map_error(self, e: grpc.aio.AioRpcError, call: str) -> Exception:
        code = e.code()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and call == "login":
            # At run time grpc.aio metadata is (key, value) pairs; the stubs say otherwise.
            pairs = cast("Iterable[tuple[str, str | bytes]]", e.trailing_metadata() or ())
            trailing = [value for key, value in pairs if key == "retry-after"]
            wait = (
                (trailing[0].decode() if isinstance(trailing[0], bytes) else trailing[0])
                if trailing
                else "1"
            )
            return ProblemError(
                429,
                "too many failed logins for this username; try again later",
                type_="login-throttled",
                headers={"Retry-After": retry_after(float(wait) if wait.isdigit() else 1.0)},
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if call == "login":
                return unauthorized("invalid username or password")
            return unauthorized("the bearer token is invalid, expired or revoked")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ProblemError(422, e.details() or "invalid argument", title="Invalid input")
        if code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}:
            log.warning("auth_service_unreachable", call=call, code=code.name)
            return ServerUnreachableError(f"the auth service at {self._target} did not answer")
        log.error("auth_call_failed", call=call, code=code.name)
        return ServerUnreachableError(f"the auth service failed ({code.name})")
