"""Accounts: roles, users, input rules and the four use cases behind the gRPC service.

Nothing here knows about gRPC or MongoDB: the servicer maps requests and errors at the
edge, and the store is any `UserStore`. That keeps the rules testable without servers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from auth_grpc.passwords import PasswordHasher
from auth_grpc.tokens import TokenClaims, TokenError, decode_token, issue_token

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


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    claims: TokenClaims


class UserStore(Protocol):
    """Where users and revoked token ids live (MongoDB in production: `MongoUserStore`)."""

    async def create_user(self, username: str, password_hash: str, roles: list[Role]) -> User:
        """Insert a user; raise `UserExistsError` when the username is taken."""
        ...

    async def find_by_username(self, username: str) -> User | None: ...

    async def find_by_id(self, user_id: str) -> User | None: ...

    async def update_password_hash(self, user_id: str, password_hash: str) -> None: ...

    async def revoke(self, token_id: str, user_id: str, expires_at: datetime) -> None:
        """Deny `token_id` until `expires_at`; revoking twice is harmless."""
        ...

    async def is_revoked(self, token_id: str) -> bool: ...


class AccountService:
    """Register, Login, Verify and Revoke, over a `UserStore` and a `PasswordHasher`."""

    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        *,
        token_secret: str,
        token_ttl_seconds: int,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._secret = token_secret
        self._ttl = token_ttl_seconds

    async def register(
        self, username: str, password: str, role: Role, *, admin_token: str = ""
    ) -> User:
        """Open sign-up creates readers; writer and admin need a valid admin's token."""
        validate_username(username)
        validate_password(password)
        if role != "reader":
            await self._require_admin(admin_token)
        password_hash = await self._hasher.hash(password)
        return await self._store.create_user(username, password_hash, roles_for(role))

    async def login(self, username: str, password: str) -> tuple[User, IssuedToken]:
        """Check the credentials and issue a token; upgrade the hash when parameters changed."""
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
        if not await self._hasher.verify(user.password_hash, password):
            raise UnauthenticatedError(BAD_CREDENTIALS)
        if self._hasher.needs_rehash(user.password_hash):
            await self._store.update_password_hash(user.id, await self._hasher.hash(password))
        token, claims = issue_token(
            secret=self._secret,
            user_id=user.id,
            username=user.username,
            roles=list(user.roles),
            ttl_seconds=self._ttl,
        )
        return user, IssuedToken(access_token=token, expires_in=self._ttl, claims=claims)

    async def verify(self, token: str) -> VerifiedToken:
        """Signature, expiry, revocation and that the user still exists; roles from the record."""
        claims = self._decode(token)
        if await self._store.is_revoked(claims.token_id):
            raise UnauthenticatedError("token has been revoked")
        user = await self._store.find_by_id(claims.user_id)
        if user is None:
            raise UnauthenticatedError("token belongs to a user that no longer exists")
        return VerifiedToken(
            user_id=user.id,
            username=user.username,
            roles=user.roles,
            expires_at=claims.expires_at,
            token_id=claims.token_id,
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
            raise PermissionDeniedError("only an admin may create writer or admin users")
        try:
            verified = await self.verify(admin_token)
        except UnauthenticatedError as e:
            raise PermissionDeniedError(f"admin token refused: {e}") from e
        if "admin" not in verified.roles:
            raise PermissionDeniedError("only an admin may create writer or admin users")
