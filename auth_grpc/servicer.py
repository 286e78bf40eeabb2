"""The gRPC edge of the auth service: protobuf in, `AccountService` call, protobuf out.

Every call logs exactly one line (`user_registered`, `login_succeeded`, `token_verified`,
`token_revoked`, or the matching `*_refused` / `auth_call_failed`). Passwords and tokens
are never logged; token ids (`jti`) and user ids are. A username is logged as typed only
once it proved to be one (a successful login or registration): people sometimes type their
password into the username field, so refusals carry `username_digest` instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from auth_grpc.accounts import (
    AccountError,
    AccountService,
    InvalidArgumentError,
    LoginThrottledError,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    User,
    UserExistsError,
)
from auth_grpc.login_throttle import username_digest
from auth_grpc.metrics import AuthMetrics
from infra.errors import PipelineError, RetriableError
from protos.auth.v1 import auth_pb2, auth_pb2_grpc

log = structlog.get_logger(__name__)

RETRY_AFTER_METADATA = "retry-after"

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

ROLE_TO_PROTO: dict[Role, auth_pb2.Role.ValueType] = {
    "reader": auth_pb2.ROLE_READER,
    "writer": auth_pb2.ROLE_WRITER,
    "admin": auth_pb2.ROLE_ADMIN,
}
PROTO_TO_ROLE: dict[int, Role] = {
    auth_pb2.ROLE_UNSPECIFIED: "reader",  # the proto says: unspecified means reader
    auth_pb2.ROLE_READER: "reader",
    auth_pb2.ROLE_WRITER: "writer",
    auth_pb2.ROLE_ADMIN: "admin",
}

_STATUS_FOR: list[tuple[type[AccountError], grpc.StatusCode]] = [
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (UserExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (LoginThrottledError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """`auth.v1.AuthService` over an `AccountService`."""

    def __init__(self, accounts: AccountService, metrics: AuthMetrics | None = None) -> None:
        self._accounts = accounts
        self._metrics = metrics or AuthMetrics()

    async def Register(  # noqa: N802 - gRPC method names come from the proto
        self, request: auth_pb2.RegisterRequest, context: Context
    ) -> auth_pb2.RegisterResponse:
        bound = log.bind(rpc="Register", username_digest=username_digest(request.username))

        async def register() -> User:
            role = PROTO_TO_ROLE.get(request.role)
            if role is None:
                raise InvalidArgumentError(f"unknown role {request.role}")
            return await self._accounts.register(
                request.username,
                request.password,
                role,
                admin_token=request.admin_token,
                collections=list(request.collections),
            )

        user = await self._call("Register", bound, "registration_refused", context, register)
        bound.info("user_registered", user_id=user.id, username=user.username, role=user.role)
        return auth_pb2.RegisterResponse(
            user_id=user.id, username=user.username, role=ROLE_TO_PROTO[user.role]
        )

    async def Login(  # noqa: N802
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        bound = log.bind(rpc="Login", username_digest=username_digest(request.username))
        user, issued = await self._call(
            "Login",
            bound,
            "login_refused",
            context,
            lambda: self._accounts.login(request.username, request.password),
        )
        bound.info(
            "login_succeeded",
            user_id=user.id,
            username=user.username,
            token_id=issued.claims.token_id,
        )
        return auth_pb2.LoginResponse(
            access_token=issued.access_token,
            token_type="bearer",  # noqa: S106 - the OAuth2 token type, not a secret
            expires_in=issued.expires_in,
        )

    async def Verify(  # noqa: N802
        self, request: auth_pb2.VerifyRequest, context: Context
    ) -> auth_pb2.VerifyResponse:
        bound = log.bind(rpc="Verify")
        verified = await self._call(
            "Verify", bound, "token_refused", context, lambda: self._accounts.verify(request.token)
        )
        bound.info("token_verified", user_id=verified.user_id, token_id=verified.token_id)
        return auth_pb2.VerifyResponse(
            user_id=verified.user_id,
            username=verified.username,
            roles=[ROLE_TO_PROTO[r] for r in verified.roles],
            expires_at=verified.expires_at,
            token_id=verified.token_id,
            collections=list(verified.collections),
        )

    async def Revoke(  # noqa: N802
        self, request: auth_pb2.RevokeRequest, context: Context
    ) -> auth_pb2.RevokeResponse:
        bound = log.bind(rpc="Revoke")
        claims = await self._call(
            "Revoke", bound, "revoke_refused", context, lambda: self._accounts.revoke(request.token)
        )
        bound.info("token_revoked", user_id=claims.user_id, token_id=claims.token_id)
        return auth_pb2.RevokeResponse(revoked=True)

    async def _call(
        self,
        rpc: str,
        bound: structlog.typing.FilteringBoundLogger,
        refused_event: str,
        context: Context,
        call: Callable[[], Awaitable[T]],
    ) -> T:
        """Run a use case; turn its refusals and infrastructure errors into gRPC statuses."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await call()
        except AccountError as e:
            code = next(c for kind, c in _STATUS_FOR if isinstance(e, kind))
            bound.info(refused_event, code=code.name, reason=str(e))
            if isinstance(e, LoginThrottledError):
                wait = str(math.ceil(e.retry_after_s))
                context.set_trailing_metadata(((RETRY_AFTER_METADATA, wait),))
            await context.abort(code, str(e))
        except RetriableError as e:
            # The client may retry UNAVAILABLE; the detail stays in our log, not on the wire.
            code = grpc.StatusCode.UNAVAILABLE
            bound.warning("auth_call_failed", code=code.name, error=str(e))
            await context.abort(code, "user store unavailable, try again")
        except PipelineError as e:
            code = grpc.StatusCode.INTERNAL
            bound.error("auth_call_failed", code=code.name, error=str(e))
            await context.abort(code, "internal error")
        finally:
            self._metrics.observe(rpc, code.name, time.perf_counter() - started)
