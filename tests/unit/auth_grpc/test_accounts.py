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
    LoginThrottledError,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    User,
    UserExistsError,
    failure_delay_s,
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

    async def create_user(
        self,
        username: str,
        password_hash: str,
        roles: list[Role],
        collections: tuple[str, ...] = (),
    ) -> User:
        if any(u.username == username for u in self.users.values()):
            raise UserExistsError(username)
        user = User(
            str(uuid.uuid4()),
            username,
            password_hash,
            tuple(roles),
            datetime.now(UTC),
            collections=collections,
        )
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


class InMemoryThrottle:
    """A `LoginThrottle` in a dict, with the production delay rule and a settable clock."""

    def __init__(self, free_failures: int = 3, max_delay_s: float = 60.0) -> None:
        self.failures: dict[str, int] = {}
        self.next_at: dict[str, float] = {}
        self.now = 1000.0
        self.free_failures = free_failures
        self.max_delay_s = max_delay_s

    async def admit(self, username: str) -> float | None:
        wait = self.next_at.get(username, 0.0) - self.now
        return wait if wait > 0 else None

    async def failed(self, username: str) -> None:
        count = self.failures[username] = self.failures.get(username, 0) + 1
        delay = failure_delay_s(count, self.free_failures, self.max_delay_s)
        self.next_at[username] = self.now + delay

    async def succeeded(self, username: str) -> None:
        self.failures.pop(username, None)
        self.next_at.pop(username, None)


def _accounts(
    store: InMemoryUserStore,
    hasher: PasswordHasher | None = None,
    *,
    open_signup: bool = True,
    throttle: InMemoryThrottle | None = None,
) -> AccountService:
    return AccountService(
        store,
        hasher or fast_hasher(),
        token_secret=SECRET,
        token_ttl_seconds=900,
        open_signup=open_signup,
        throttle=throttle,
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


async def test_sign_up_is_closed_by_default_even_for_readers(store: InMemoryUserStore) -> None:
    accounts = AccountService(store, fast_hasher(), token_secret=SECRET, token_ttl_seconds=900)
    with pytest.raises(PermissionDeniedError):
        await accounts.register("mallory", "password1", "reader")
    assert store.users == {}
    admin_token = await _admin_token(accounts, store)
    reader = await accounts.register("alice", "password1", "reader", admin_token=admin_token)
    assert reader.roles == ("reader",)


async def test_a_disabled_user_can_neither_log_in_nor_use_an_earlier_token(
    store: InMemoryUserStore,
) -> None:
    accounts = _accounts(store)
    user = await accounts.register("alice", "password1", "reader")
    _, issued = await accounts.login("alice", "password1")
    store.users[user.id] = replace(store.users[user.id], disabled=True)
    with pytest.raises(UnauthenticatedError, match=BAD_CREDENTIALS):
        await accounts.login("alice", "password1")
    with pytest.raises(UnauthenticatedError, match="disabled"):
        await accounts.verify(issued.access_token)


async def test_verify_returns_the_collections_a_user_is_scoped_to(
    store: InMemoryUserStore,
) -> None:
    accounts = _accounts(store)
    admin_token = await _admin_token(accounts, store)
    await accounts.register(
        "alice", "password1", "writer", admin_token=admin_token, collections=("books", "authors")
    )
    _, issued = await accounts.login("alice", "password1")
    verified = await accounts.verify(issued.access_token)
    assert verified.collections == ("books", "authors")


async def test_a_scope_naming_an_invalid_collection_is_refused(store: InMemoryUserStore) -> None:
    accounts = _accounts(store)
    admin_token = await _admin_token(accounts, store)
    with pytest.raises(InvalidArgumentError, match="collection"):
        await accounts.register(
            "alice", "password1", "writer", admin_token=admin_token, collections=("Bad!",)
        )


def test_failures_are_free_up_to_the_threshold_then_the_delay_doubles_up_to_a_cap() -> None:
    delays = [failure_delay_s(n, free_failures=3, max_delay_s=60) for n in range(1, 12)]
    assert delays == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]


async def test_repeated_failed_logins_for_one_username_are_throttled_without_hashing(
    store: InMemoryUserStore,
) -> None:
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        async def verify(self, password_hash: str, password: str) -> bool:
            calls.append(password_hash)
            return await super().verify(password_hash, password)

    throttle = InMemoryThrottle(free_failures=3)
    accounts = _accounts(store, CountingHasher.from_parameters(FAST_ARGON2), throttle=throttle)
    await accounts.register("alice", "password1", "reader")
    for _ in range(3):
        with pytest.raises(UnauthenticatedError):
            await accounts.login("alice", "wrong-password")
    hashed = len(calls)
    with pytest.raises(LoginThrottledError) as throttled:
        await accounts.login("alice", "password1")  # even the right password waits
    assert throttled.value.retry_after_s == pytest.approx(1.0)
    assert len(calls) == hashed, "a throttled attempt must not cost a hash"
    throttle.now += 1.5
    _, issued = await accounts.login("alice", "password1")
    assert issued.access_token
    assert "alice" not in throttle.failures, "a success clears the failures"


async def test_unknown_usernames_are_throttled_like_existing_ones(
    store: InMemoryUserStore,
) -> None:
    throttle = InMemoryThrottle(free_failures=1)
    accounts = _accounts(store, throttle=throttle)
    with pytest.raises(UnauthenticatedError):
        await accounts.login("nobody", "password1")
    with pytest.raises(LoginThrottledError):
        await accounts.login("nobody", "password1")
