"""Auth settings that bound how long a revoked token or a token itself may live."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings


def test_the_verify_cache_cannot_outlast_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misconfigured cache would keep revoked tokens working for that long."""
    monkeypatch.setenv("OUTBOX_AUTH_VERIFY_CACHE_SECONDS", "3600")
    with pytest.raises(ValidationError, match="verify_cache_seconds"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("OUTBOX_AUTH_VERIFY_CACHE_SECONDS", "60")
    assert Settings(_env_file=None).auth.verify_cache_seconds == 60  # type: ignore[call-arg]


def test_a_token_lifetime_over_a_day_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_AUTH_TOKEN_TTL_SECONDS", str(30 * 86400))
    with pytest.raises(ValidationError, match="token_ttl_seconds"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_open_sign_up_is_off_by_default() -> None:
    assert Settings(_env_file=None).auth.open_signup is False  # type: ignore[call-arg]
