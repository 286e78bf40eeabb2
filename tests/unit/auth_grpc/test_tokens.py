"""Access tokens: what is accepted and everything that must be refused."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_grpc.tokens import (
    AUDIENCE,
    ISSUER,
    MAX_TTL_SECONDS,
    TokenError,
    TokenExpiredError,
    decode_token,
    issue_token,
)

SECRET = "unit-test-secret-0123456789abcdef0123456789"
OTHER_SECRET = "another-secret-0123456789abcdef0123456789ab"


def _issue(**overrides: object) -> str:
    kwargs: dict[str, object] = {
        "secret": SECRET,
        "user_id": "user-1",
        "username": "alice",
        "roles": ["reader", "writer"],
        "ttl_seconds": 3600,
    }
    kwargs.update(overrides)
    token, _ = issue_token(**kwargs)  # type: ignore[arg-type]
    return token


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_fresh_token_decodes_to_the_claims_it_was_issued_with() -> None:
    token, issued = issue_token(
        secret=SECRET, user_id="user-1", username="alice", roles=["reader"], ttl_seconds=600
    )
    claims = decode_token(token, secret=SECRET)
    assert claims == issued
    assert claims.expires_at - claims.issued_at == 600
    assert abs(claims.issued_at - time.time()) < 5


def test_every_token_gets_its_own_id() -> None:
    ids = {
        issue_token(secret=SECRET, user_id="u", username="alice", roles=[], ttl_seconds=60)[
            1
        ].token_id
        for _ in range(50)
    }
    assert len(ids) == 50


def test_the_payload_carries_sub_name_roles_iat_exp_jti_iss_aud() -> None:
    payload = jwt.decode(_issue(), SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert set(payload) == {"sub", "name", "roles", "iat", "exp", "jti", "iss", "aud"}
    assert payload["iss"] == ISSUER
    assert payload["aud"] == AUDIENCE
    assert payload["sub"] == "user-1"
    assert payload["name"] == "alice"
    assert payload["roles"] == ["reader", "writer"]


def test_an_expired_token_is_refused_as_expired() -> None:
    token = _issue(now=int(time.time()) - 7200, ttl_seconds=3600)
    with pytest.raises(TokenExpiredError):
        decode_token(token, secret=SECRET)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = _issue(secret=OTHER_SECRET)
    with pytest.raises(TokenError, match="invalid"):
        decode_token(token, secret=SECRET)


def test_a_token_with_a_tampered_payload_is_refused() -> None:
    header, _, signature = _issue().split(".")
    forged = _b64(
        {
            "sub": "user-1",
            "name": "alice",
            "roles": ["reader", "writer", "admin"],
            "iat": int(time.time()),
            "exp": int(time.time()) + 3600,
            "jti": "x",
        }
    )
    with pytest.raises(TokenError):
        decode_token(f"{header}.{forged}.{signature}", secret=SECRET)


def test_an_unsigned_alg_none_token_is_refused() -> None:
    now = int(time.time())
    claims = {
        "sub": "user-1",
        "name": "alice",
        "roles": ["admin"],
        "iat": now,
        "exp": now + 3600,
        "jti": "x",
    }
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(TokenError):
        decode_token(unsigned, secret=SECRET)


def test_a_token_signed_with_another_hmac_algorithm_is_refused() -> None:
    now = int(time.time())
    claims = {"sub": "u", "name": "a", "roles": [], "iat": now, "exp": now + 60, "jti": "x"}
    long_secret = SECRET * 2  # HS512 wants a 64-byte key
    token = jwt.encode(claims, long_secret, algorithm="HS512")
    with pytest.raises(TokenError):
        decode_token(token, secret=long_secret)


def test_a_validly_signed_token_missing_a_claim_is_refused() -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "u", "name": "a", "iat": now, "exp": now + 60}, SECRET)
    with pytest.raises(TokenError):
        decode_token(token, secret=SECRET)


def test_a_validly_signed_token_with_wrongly_typed_claims_is_refused() -> None:
    now = int(time.time())
    token = jwt.encode(
        {
            "sub": "u",
            "name": "a",
            "roles": "admin",
            "iat": now,
            "exp": now + 60,
            "jti": "x",
            "iss": ISSUER,
            "aud": AUDIENCE,
        },
        SECRET,
    )
    with pytest.raises(TokenError, match="claim types"):
        decode_token(token, secret=SECRET)


@given(st.text(max_size=300))
def test_arbitrary_text_is_never_accepted_as_a_token(garbage: str) -> None:
    with pytest.raises(TokenError):
        decode_token(garbage, secret=SECRET)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_flipping_any_bit_of_a_token_makes_it_invalid(position: int, mask: int) -> None:
    token = _issue()
    index = position % len(token)
    flipped = chr(ord(token[index]) ^ (mask or 1))
    tampered = token[:index] + flipped + token[index + 1 :]
    try:
        claims = decode_token(tampered, secret=SECRET)
    except TokenError:
        return
    # base64url padding bits can change without changing the decoded bytes: then the
    # token is the same token, never a different identity.
    assert claims == decode_token(token, secret=SECRET)


def _signed(**overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "user-1",
        "name": "alice",
        "roles": ["reader"],
        "iat": now,
        "exp": now + 600,
        "jti": "x",
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET)


def test_a_correctly_signed_token_passes_when_it_names_our_issuer_and_audience() -> None:
    assert decode_token(_signed(), secret=SECRET).user_id == "user-1"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iss": None}, id="no-iss"),
        pytest.param({"aud": None}, id="no-aud"),
        pytest.param({"iss": "someone-else"}, id="foreign-iss"),
        pytest.param({"aud": "another-service"}, id="foreign-aud"),
    ],
)
def test_a_token_signed_with_our_secret_for_another_issuer_or_audience_is_refused(
    overrides: dict[str, object],
) -> None:
    """Another system sharing the HS256 secret cannot mint tokens we accept."""
    with pytest.raises(TokenError):
        decode_token(_signed(**overrides), secret=SECRET)


def test_a_token_living_longer_than_the_maximum_lifetime_is_refused() -> None:
    now = int(time.time())
    with pytest.raises(TokenError, match="lifetime"):
        decode_token(_signed(iat=now, exp=now + MAX_TTL_SECONDS + 1), secret=SECRET)


def test_no_token_is_issued_for_longer_than_the_maximum_lifetime() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        _issue(ttl_seconds=MAX_TTL_SECONDS + 1)
