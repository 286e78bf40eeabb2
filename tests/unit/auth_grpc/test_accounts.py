"""The account rules without servers: input validation, roles, login, verify, revoke."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_grpc.accounts import (
    BAD_CREDENTIALS,
    AccountService,
    InvalidArgumentError,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    User,
    UserExistsError,
    highest_role,
    roles_for,
    validate_password,
    validate_username,
)
from auth_grpc.passwords import PasswordHasher
from auth_grpc.tokens import issue_token
from tests.fixtures.auth import FAST_ARGON2, fast_hasher

SECRET = "unit-test-secret-0123456789abcdef0123456789"


class InMemoryUserStore:
    """A `UserStore` in a dict: enough to exercise the rules (MongoDB is tested for real)."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.revoked: dict[str, datetime] = {}

    async def create_user(self, username: str, password_hash: str, roles: list[Role]) -> User:
        if any(u.username == username for u in self.users.values()):
            raise UserExistsError(username)
        user = User(str(uuid.uuid4()), username, password_hash, tuple(roles), datetime.now(UTC))
        self.users[user.id] = user
        return user

    async def find_by_username(self, username: str) -> User | None:
        return next((u for u in self.users.values() if u.username == username), None)

    async def find_by_id(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    async def update_password_hash(self, user_id: str, password_hash: str) -> None:
        self.users[user_id] = replace(self.users[user_id], password_hash=password_hash)

    async def revoke(self, token_id: str, user_id: str, expires_at: datetime) -> None:
        self.revoked.setdefault(token_id, expires_at)

    async def is_revoked(self, token_id: str) -> bool:
        return token_id in self.revoked


@pytest.fixture
def store() -> InMemoryUserStore:
    return InMemoryUserStore()


def _accounts(store: InMemoryUserStore, hasher: PasswordHasher | None = None) -> AccountService:
    return AccountService(
        store, hasher or fast_hasher(), token_secret=SECRET, token_ttl_seconds=900
    )


async def _admin_token(accounts: AccountService, store: InMemoryUserStore) -> str:
    await store.create_user("root", await fast_hasher().hash("root-password"), roles_for("admin"))
    _, issued = await accounts.login("root", "root-password")
    return issued.access_token


@pytest.mark.parametrize("name", ["abc", "a" * 64, "Alice_B.c-9", "..._"])
def test_usernames_of_3_to_64_allowed_characters_are_accepted(name: str) -> None:
    validate_username(name)


@pytest.mark.parametrize(
    "name", ["", "ab", "a" * 65, "with space", "semi;colon", "ünïcode", "new\nline", "a/b"]
)
def test_other_usernames_are_invalid(name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_username(name)


@given(st.text(max_size=80))
def test_a_username_is_valid_exactly_when_it_matches_the_documented_rule(name: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    expected = 3 <= len(name) <= 64 and set(name) <= allowed
    try:
        validate_username(name)
    except InvalidArgumentError:
        assert not expected
    else:
        assert expected


def test_passwords_need_at_least_8_characters() -> None:
    validate_password("12345678")
    with pytest.raises(InvalidArgumentError, match="at least 8"):
        validate_password("1234567")


def test_absurdly_long_passwords_are_refused_before_hashing() -> None:
    with pytest.raises(InvalidArgumentError, match="at most"):
        validate_password("x" * 1025)


def test_each_role_includes_the_roles_below_it() -> None:
    assert roles_for("reader") == ["reader"]
    assert roles_for("writer") == ["reader", "writer"]
    assert roles_for("admin") == ["reader", "writer", "admin"]
    assert highest_role(roles_for("admin")) == "admin"
    assert highest_role([]) == "reader"


async def test_open_sign_up_creates_a_reader_with_a_hashed_password(
    store: InMemoryUserStore,
) -> None:
    user = await _accounts(store).register("alice", "password1", "reader")
    assert user.roles == ("reader",)
    assert user.password_hash.startswith("$argon2id$")
    assert "password1" not in user.password_hash


@pytest.mark.parametrize("role", ["writer", "admin"])
async def test_writer_or_admin_sign_up_without_an_admin_token_is_denied(
    store: InMemoryUserStore, role: Role
) -> None:
    with pytest.raises(PermissionDeniedError):
        await _accounts(store).register("mallory", "password1", role)
    assert store.users == {}


async def test_a_non_admin_token_cannot_create_a_writer(store: InMemoryUserStore) -> None:
    accounts = _accounts(store)
    await accounts.register("reader1", "password1", "reader")
    _, issued = await accounts.login("reader1", "password1")
    with pytest.raises(PermissionDeniedError):
        await accounts.register("mallory", "password1", "writer", admin_token=issued.access_token)


async def test_a_revoked_admin_token_cannot_create_a_writer(store: InMemoryUserStore) -> None:
    accounts = _accounts(store)
    admin_token = await _admin_token(accounts, store)
    await accounts.revoke(admin_token)
    with pytest.raises(PermissionDeniedError, match="revoked"):
        await accounts.register("mallory", "password1", "writer", admin_token=admin_token)


async def test_an_admin_token_can_create_writers_and_admins(store: InMemoryUserStore) -> None:
    accounts = _accounts(store)
    admin_token = await _admin_token(accounts, store)
    writer = await accounts.register("writer1", "password1", "writer", admin_token=admin_token)
    admin = await accounts.register("admin1", "password1", "admin", admin_token=admin_token)
    assert writer.role == "writer"
    assert admin.roles == ("reader", "writer", "admin")


async def test_a_duplicate_username_is_refused(store: InMemoryUserStore) -> None:
    accounts = _accounts(store)
    await accounts.register("alice", "password1", "reader")
    with pytest.raises(UserExistsError):
        await accounts.register("alice", "password2", "reader")


async def test_login_gives_the_same_answer_for_unknown_users_and_bad_passwords(
    store: InMemoryUserStore,
) -> None:
    accounts = _accounts(store)
    await accounts.register("alice", "password1", "reader")
    with pytest.raises(UnauthenticatedError) as bad_password:
        await accounts.login("alice", "wrong-password")
    with pytest.raises(UnauthenticatedError) as unknown_user:
        await accounts.login("nobody", "password1")
    with pytest.raises(UnauthenticatedError) as invalid_name:
        await accounts.login("x", "password1")
    assert str(bad_password.value) == str(unknown_user.value) == str(invalid_name.value)
    assert str(bad_password.value) == BAD_CREDENTIALS


async def test_login_for_an_unknown_user_still_does_argon2_work(
    store: InMemoryUserStore,
) -> None:
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        async def verify(self, password_hash: str, password: str) -> bool:
            calls.append(password_hash)
            return await super().verify(password_hash, password)

    accounts = _accounts(store, CountingHasher.from_parameters(FAST_ARGON2))
    with pytest.raises(UnauthenticatedError):
        await accounts.login("nobody", "password1")
    assert len(calls) == 1
    assert calls[0].startswith("$argon2id$")


async def test_login_upgrades_a_hash_made_with_old_parameters(store: InMemoryUserStore) -> None:
    old = fast_hasher()
    user = await store.create_user("alice", await old.hash("password1"), roles_for("writer"))
    new = PasswordHasher.from_parameters(replace(FAST_ARGON2, time_cost=2))
    await _accounts(store, new).login("alice", "password1")
    upgraded = store.users[user.id].password_hash
    assert upgraded != user.password_hash
    assert not new.needs_rehash(upgraded)
    assert await new.verify(upgraded, "password1")


async def test_verify_returns_roles_from_the_user_record_not_the_token(
    store: InMemoryUserStore,
) -> None:
    accounts = _accounts(store)
    user = await store.create_user("alice", await fast_hasher().hash("password1"), ["reader"])
    token, _ = issue_token(
        secret=SECRET,
        user_id=user.id,
        username="alice",
        roles=["reader", "writer", "admin"],
        ttl_seconds=60,
    )
    verified = await accounts.verify(token)
    assert verified.roles == ("reader",)
    assert verified.user_id == user.id
    assert verified.username == "alice"


async def test_a_token_of_a_deleted_user_no_longer_verifies(store: InMemoryUserStore) -> None:
    accounts = _accounts(store)
    await accounts.register("alice", "password1", "reader")
    user, issued = await accounts.login("alice", "password1")
    del store.users[user.id]
    with pytest.raises(UnauthenticatedError, match="no longer exists"):
        await accounts.verify(issued.access_token)


async def test_a_revoked_token_no_longer_verifies_and_revoking_twice_is_harmless(
    store: InMemoryUserStore,
) -> None:
    accounts = _accounts(store)
    await accounts.register("alice", "password1", "reader")
    _, issued = await accounts.login("alice", "password1")
    assert (await accounts.verify(issued.access_token)).token_id == issued.claims.token_id
    await accounts.revoke(issued.access_token)
    await accounts.revoke(issued.access_token)
    with pytest.raises(UnauthenticatedError, match="revoked"):
        await accounts.verify(issued.access_token)
    assert store.revoked[issued.claims.token_id] == datetime.fromtimestamp(
        issued.claims.expires_at, tz=UTC
    )


async def test_a_garbage_token_cannot_be_revoked(store: InMemoryUserStore) -> None:
    with pytest.raises(UnauthenticatedError):
        await _accounts(store).revoke("not.a.token")
    assert store.revoked == {}


async def test_an_oversized_password_at_login_is_refused_without_hashing(
    store: InMemoryUserStore,
) -> None:
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        async def verify(self, password_hash: str, password: str) -> bool:
            calls.append(password_hash)
            return await super().verify(password_hash, password)

    accounts = _accounts(store, CountingHasher.from_parameters(FAST_ARGON2))
    await accounts.register("alice", "password1", "reader")
    with pytest.raises(UnauthenticatedError, match=BAD_CREDENTIALS):
        await accounts.login("alice", "x" * 100_000)
    assert calls == []
