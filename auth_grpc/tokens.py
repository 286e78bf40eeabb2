"""Access tokens: HS256 JWTs with a unique `jti`. Pure functions, no I/O.

Claims: `sub` (user id), `name` (username), `roles`, `iat`, `exp`, `jti`, `iss`
(`outbox-auth`) and `aud` (`outbox-api`). Only HS256 is accepted on decode, so a token that
says `alg: none` (or anything else) is refused; `iss` and `aud` are required, so a token
another system signed with the same secret is refused too; and no token may live longer
than `MAX_TTL_SECONDS`, whatever its signature says.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ISSUER = "outbox-auth"
AUDIENCE = "outbox-api"
MAX_TTL_SECONDS = 24 * 3600
_REQUIRED_CLAIMS = ["sub", "name", "roles", "iat", "exp", "jti", "iss", "aud"]


class TokenError(Exception):
    """The token cannot be trusted: malformed, badly signed, tampered with or expired."""


class TokenExpiredError(TokenError):
    """The token was valid but its `exp` has passed."""


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    username: str
    roles: tuple[str, ...]
    issued_at: int
    expires_at: int
    token_id: str


def issue_token(
    *,
    secret: str,
    user_id: str,
    username: str,
    roles: list[str],
    ttl_seconds: int,
    now: int | None = None,
) -> tuple[str, TokenClaims]:
    """Sign a new token valid for `ttl_seconds` from `now` (default: the current time)."""
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"a token's lifetime must be 1 to {MAX_TTL_SECONDS} seconds")
    issued_at = int(time.time()) if now is None else now
    claims = TokenClaims(
        user_id=user_id,
        username=username,
        roles=tuple(roles),
        issued_at=issued_at,
        expires_at=issued_at + ttl_seconds,
        token_id=uuid.uuid4().hex,
    )
    payload = {
        "sub": claims.user_id,
        "name": claims.username,
        "roles": list(claims.roles),
        "iat": claims.issued_at,
        "exp": claims.expires_at,
        "jti": claims.token_id,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM), claims


def decode_token(token: str, *, secret: str) -> TokenClaims:
    """Check signature, algorithm and expiry; raise `TokenError` (or `TokenExpiredError`)."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            audience=AUDIENCE,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as e:
        raise TokenExpiredError("token has expired") from e
    except jwt.InvalidTokenError as e:
        raise TokenError(f"token is invalid: {e}") from e
    sub, name, roles, jti = payload["sub"], payload["name"], payload["roles"], payload["jti"]
    iat, exp = payload["iat"], payload["exp"]
    if not (
        isinstance(sub, str)
        and isinstance(name, str)
        and isinstance(jti, str)
        and isinstance(roles, list)
        and all(isinstance(r, str) for r in roles)
        and isinstance(iat, int)
        and isinstance(exp, int)
    ):
        raise TokenError("token is invalid: unexpected claim types")
    if exp - iat > MAX_TTL_SECONDS:
        raise TokenError("token is invalid: its lifetime exceeds the maximum")
    return TokenClaims(
        user_id=sub,
        username=name,
        roles=tuple(roles),
        issued_at=iat,
        expires_at=exp,
        token_id=jti,
    )
