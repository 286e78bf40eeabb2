"""Accounts: roles, users, input rules and the four use cases behind the gRPC service.

Nothing here knows about gRPC or MongoDB: the servicer maps requests and errors at the
edge, and the store is any `UserStore`. That keeps the rules testable without servers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from auth_grpc.passwords import PasswordHasher
from auth_grpc.tokens import TokenClaims, TokenError, decode_token, issue_token
from infra.naming import is_collection_name

Role = Literal["reader", "writer", "admin"]

# Each role includes the ones before it: a writer can do what a reader can, an admin
# what a writer can. Tokens and Verify carry the expanded list so a client can simply
# ask "is `writer` in roles?".
ROLE_ORDER: tuple[Role, ...] = ("reader", "writer", "admin")

USERNAME_PATTERN = re.compile(r"^[a-zA-Z0-9_.-]{3,64}$")
MIN_PASSWORD_LENGTH = 8
# argon2 hashes any length, but an unbounded one lets a client make us hash megabytes.
MAX_PASSWORD_LENGTH = 1024

# One message for every failed login so a client cannot tell unknown users from bad passwords.
BAD_CREDENTIALS = "invalid username or password"


class AccountError(Exception):
    """Base for the outcomes a caller is told about (mapped to a gRPC status at the edge)."""


class InvalidArgumentError(AccountError):
    """The request breaks an input rule (username, password, role)."""


class UserExistsError(AccountError):
    """A user with that username already exists."""


class PermissionDeniedError(AccountError):
    """The caller may not do this (a writer/admin sign-up without a valid admin token)."""


class UnauthenticatedError(AccountError):
    """Bad credentials, or a token that is malformed, expired, revoked or orphaned."""


class LoginThrottledError(AccountError):
    """Too many failed logins for this username: try again after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed logins; try again in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


def roles_for(role: Role) -> list[Role]:
    """The role and every role below it, lowest first: `admin` → reader, writer, admin."""
    return list(ROLE_ORDER[: ROLE_ORDER.index(role) + 1])


def highest_role(roles: list[Role] | tuple[Role, ...]) -> Role:
    """The strongest role in `roles` (reader when empty)."""
    return max(roles, key=ROLE_ORDER.index, default="reader")


def validate_username(username: str) -> None:
    """3 to 64 characters from letters, digits, `_`, `.` and `-`."""
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidArgumentError(
            "username must be 3-64 characters of letters, digits, '_', '.' or '-'"
        )


def validate_collections(collections: Sequence[str]) -> tuple[str, ...]:
    """A role's collection scope: valid collection names (empty means every collection)."""
    for name in collections:
        if not is_collection_name(name):
            raise InvalidArgumentError(f"{name[:80]!r} is not a valid collection name")
    return tuple(dict.fromkeys(collections))


def failure_delay_s(failures: int, free_failures: int, max_delay_s: float) -> float:
    """How long a username waits after `failures` failed logins in a row.

    The first `free_failures` cost nothing (typos); then 1 s, doubling with each further
    failure, capped at `max_delay_s`: an online guesser gets a few tries per `max_delay_s`,
    and the real user, if the attacker is hammering the name, waits at most that long.
    """
    if failures < free_failures:
        return 0.0
    return float(min(max_delay_s, 2 ** min(failures - free_failures, 62)))


def validate_password(password: str) -> None:
    """At least 8 characters (and at most 1024)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgumentError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgumentError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


@dataclass(frozen=True)
class User:
    """A stored user. `roles` is the expanded list (see `roles_for`)."""

    id: str
    username: str
    password_hash: str
    roles: tuple[Role, ...]
    created_at: datetime
    collections: tuple[str, ...] = ()  # the role applies to these collections; empty: all
    disabled: bool = False

    @property
    def role(self) -> Role:
        return highest_role(self.roles)


@dataclass(frozen=True)
class VerifiedToken:
    """What Verify answers: the token's identity and expiry, roles from the user record."""

    user_id: str
    username: str
    roles: tuple[Role, ...]
    expires_at: int
    token_id: str
    collections: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    claims: TokenClaims


class UserStore(Protocol):
    """Where users and revoked token ids live (MongoDB in production: `MongoUserStore`)."""

    async def create_user(
        self,
        username: str,
        password_hash: str,
        roles: list[Role],
        collections: tuple[str, ...] = (),
    ) -> User:
        """Insert a user; raise `UserExistsError` when the username is taken."""
        ...

    async def find_by_username(self, username: str) -> User | None: ...

    async def find_by_id(self, user_id: str) -> User | None: ...

    async def update_password_hash(self, user_id: str, password_hash: str) -> None: ...

    async def revoke(self, token_id: str, user_id: str, expires_at: datetime) -> None:
        """Deny `token_id` until `expires_at`; revoking twice is harmless."""
        ...

    async def is_revoked(self, token_id: str) -> bool: ...


class LoginThrottle(Protocol):
    """Failed logins per username (MongoDB in production: `MongoLoginThrottle`)."""

    async def admit(self, username: str) -> float | None:
        """None to let the attempt go ahead, else the seconds to wait before the next one."""
        ...

    async def failed(self, username: str) -> None: ...

    async def succeeded(self, username: str) -> None: ...


class AccountService:
    """Register, Login, Verify and Revoke, over a `UserStore` and a `PasswordHasher`."""

    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        *,
        token_secret: str,
        token_ttl_seconds: int,
        open_signup: bool = False,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._secret = token_secret
        self._ttl = token_ttl_seconds
        self._open_signup = open_signup
        self._throttle = throttle

    async def register(
        self,
        username: str,
        password: str,
        role: Role,
        *,
        admin_token: str = "",
        collections: Sequence[str] = (),
    ) -> User:
        """Needs a valid admin's token, unless open sign-up is on and the role is reader."""
        validate_username(username)
        validate_password(password)
        scope = validate_collections(collections)
        if role != "reader" or scope or not self._open_signup:
            await self._require_admin(admin_token)
        password_hash = await self._hasher.hash(password)
        return await self._store.create_user(username, password_hash, roles_for(role), scope)

    async def login(self, username: str, password: str) -> tuple[User, IssuedToken]:
        """Check the credentials and issue a token; upgrade the hash when parameters changed.

        A username with too many recent failures is refused (`LoginThrottledError`) before
        any hashing, whether or not it exists, so throttling reveals nothing either.
        """
        if self._throttle is not None:
            wait = await self._throttle.admit(username)
            if wait is not None:
                raise LoginThrottledError(wait)
        try:
            user = await self._check_credentials(username, password)
        except UnauthenticatedError:
            if self._throttle is not None:
                await self._throttle.failed(username)
            raise
        if self._throttle is not None:
            await self._throttle.succeeded(username)
        return user, self._issue(user)

    async def _check_credentials(self, username: str, password: str) -> User:
        if len(password) > MAX_PASSWORD_LENGTH:
            raise UnauthenticatedError(BAD_CREDENTIALS)  # no account can have such a password
        user = (
            await self._store.find_by_username(username)
            if USERNAME_PATTERN.fullmatch(username)
            else None
        )
        if user is None:
            # Spend the same argon2 work as a real check so timing does not reveal the user.
            await self._hasher.verify_dummy(password)
            raise UnauthenticatedError(BAD_CREDENTIALS)
        if not await self._hasher.verify(user.password_hash, password) or user.disabled:
            raise UnauthenticatedError(BAD_CREDENTIALS)
        if self._hasher.needs_rehash(user.password_hash):
            await self._store.update_password_hash(user.id, await self._hasher.hash(password))
        return user

    def _issue(self, user: User) -> IssuedToken:
        token, claims = issue_token(
            secret=self._secret,
            user_id=user.id,
            username=user.username,
            roles=list(user.roles),
            ttl_seconds=self._ttl,
        )
        return IssuedToken(access_token=token, expires_in=self._ttl, claims=claims)

    async def verify(self, token: str) -> VerifiedToken:
        """Signature, expiry, revocation and that the user still exists; roles from the record."""
        claims = self._decode(token)
        if await self._store.is_revoked(claims.token_id):
            raise UnauthenticatedError("token has been revoked")
        user = await self._store.find_by_id(claims.user_id)
        if user is None:
            raise UnauthenticatedError("token belongs to a user that no longer exists")
        if user.disabled:
            raise UnauthenticatedError("token belongs to a disabled user")
        return VerifiedToken(
            user_id=user.id,
            username=user.username,
            roles=user.roles,
            expires_at=claims.expires_at,
            token_id=claims.token_id,
            collections=user.collections,
        )

    async def revoke(self, token: str) -> TokenClaims:
        """Put the token's id on the deny-list until the token would expire anyway."""
        claims = self._decode(token)
        await self._store.revoke(
            claims.token_id, claims.user_id, datetime.fromtimestamp(claims.expires_at, tz=UTC)
        )
        return claims

    def _decode(self, token: str) -> TokenClaims:
        try:
            return decode_token(token, secret=self._secret)
        except TokenError as e:
            raise UnauthenticatedError(str(e)) from e

    async def _require_admin(self, admin_token: str) -> None:
        if not admin_token:
            raise PermissionDeniedError("only an admin may create users")
        try:
            verified = await self.verify(admin_token)
        except UnauthenticatedError as e:
            raise PermissionDeniedError(f"admin token refused: {e}") from e
        if "admin" not in verified.roles or verified.collections:
            raise PermissionDeniedError("only an admin of every collection may create users")
