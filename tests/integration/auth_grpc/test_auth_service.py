"""The auth service over a real gRPC channel against the embedded MongoDB."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from auth_grpc.accounts import BAD_CREDENTIALS, roles_for
from auth_grpc.login_throttle import username_digest
from auth_grpc.passwords import PasswordHasher
from auth_grpc.server import serve, start_server
from auth_grpc.store import REVOKED_TOKENS_COLLECTION
from auth_grpc.tokens import issue_token
from infra.devstack import free_port
from infra.settings import Settings
from protos.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.fixtures.auth import FAST_ARGON2, AuthHandle, fast_hasher

pytestmark = pytest.mark.integration


async def _status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def _register(
    auth: AuthHandle, username: str, password: str = "password1", **kwargs: object
) -> auth_pb2.RegisterResponse:
    """Register through gRPC; with an admin's token unless the test passes its own."""
    if "admin_token" not in kwargs:
        kwargs["admin_token"] = await auth.admin_token()
    return await auth.stub.Register(
        auth_pb2.RegisterRequest(username=username, password=password, **kwargs)  # type: ignore[arg-type]
    )


async def test_register_login_verify_round_trip(auth_service: AuthHandle) -> None:
    registered = await _register(auth_service, "alice", "correct horse")
    assert registered.role == auth_pb2.ROLE_READER
    assert registered.username == "alice"

    login = await auth_service.stub.Login(
        auth_pb2.LoginRequest(username="alice", password="correct horse")
    )
    assert login.token_type == "bearer"
    assert login.expires_in == auth_service.settings.auth.token_ttl_seconds

    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=login.access_token))
    assert verified.user_id == registered.user_id
    assert verified.username == "alice"
    assert list(verified.roles) == [auth_pb2.ROLE_READER]
    assert verified.token_id
    assert abs(verified.expires_at - (time.time() + login.expires_in)) < 30


async def test_passwords_are_stored_as_argon2id_hashes(auth_service: AuthHandle) -> None:
    await _register(auth_service, "alice", "correct horse")
    user = await auth_service.store.find_by_username("alice")
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert "correct horse" not in user.password_hash


async def test_wrong_password_and_unknown_user_are_both_unauthenticated_alike(
    auth_service: AuthHandle,
) -> None:
    await _register(auth_service, "alice", "correct horse")
    errors = []
    for username, password in [("alice", "wrong horse"), ("nobody", "correct horse")]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await auth_service.stub.Login(
                auth_pb2.LoginRequest(username=username, password=password)
            )
        errors.append(info.value)
    assert [e.code() for e in errors] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert errors[0].details() == errors[1].details() == BAD_CREDENTIALS


@pytest.mark.parametrize(
    ("username", "password"),
    [("ab", "password1"), ("bad name", "password1"), ("a" * 65, "password1"), ("bob", "short")],
)
async def test_bad_usernames_and_short_passwords_are_invalid_arguments(
    auth_service: AuthHandle, username: str, password: str
) -> None:
    code = await _status_of(_register(auth_service, username, password))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert await auth_service.store.find_by_username(username) is None


async def test_an_unknown_role_value_is_an_invalid_argument(auth_service: AuthHandle) -> None:
    code = await _status_of(_register(auth_service, "alice", role=42))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_taken_username_is_already_exists(auth_service: AuthHandle) -> None:
    await _register(auth_service, "alice")
    code = await _status_of(_register(auth_service, "alice", "password2"))
    assert code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("role", [auth_pb2.ROLE_WRITER, auth_pb2.ROLE_ADMIN])
async def test_sign_up_cannot_escalate_without_an_admin_token(
    auth_service: AuthHandle, role: auth_pb2.Role.ValueType
) -> None:
    reader_token = await auth_service.token("reader")
    writer_token = await auth_service.token("writer")
    for admin_token in ["", reader_token, writer_token, "not-a-token"]:
        code = await _status_of(
            _register(auth_service, "mallory", role=role, admin_token=admin_token)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert await auth_service.store.find_by_username("mallory") is None


async def test_an_admin_token_can_register_writers(auth_service: AuthHandle) -> None:
    admin_token = await auth_service.token("admin")
    created = await _register(
        auth_service, "writer1", role=auth_pb2.ROLE_WRITER, admin_token=admin_token
    )
    assert created.role == auth_pb2.ROLE_WRITER
    login = await auth_service.stub.Login(
        auth_pb2.LoginRequest(username="writer1", password="password1")
    )
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=login.access_token))
    assert list(verified.roles) == [auth_pb2.ROLE_READER, auth_pb2.ROLE_WRITER]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("reader", [auth_pb2.ROLE_READER]),
        ("writer", [auth_pb2.ROLE_READER, auth_pb2.ROLE_WRITER]),
        ("admin", [auth_pb2.ROLE_READER, auth_pb2.ROLE_WRITER, auth_pb2.ROLE_ADMIN]),
    ],
)
async def test_fixture_tokens_verify_with_the_requested_role(
    auth_service: AuthHandle, role: str, expected: list[int]
) -> None:
    token = await auth_service.token(role)
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    assert list(verified.roles) == expected


async def test_a_revoked_token_stops_working(auth_service: AuthHandle) -> None:
    token = await auth_service.token("writer")
    await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    await auth_service.revoke(token)
    code = await _status_of(auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # Revoking again is harmless; other tokens of the same kind keep working.
    await auth_service.revoke(token)
    await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=await auth_service.token()))


async def test_revocations_expire_with_their_token_through_a_ttl_index(
    auth_service: AuthHandle,
) -> None:
    token = await auth_service.token("writer")
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    await auth_service.revoke(token)
    db = auth_service.server.client[auth_service.settings.mongo.database]
    entry = await db[REVOKED_TOKENS_COLLECTION].find_one({"_id": verified.token_id})
    assert entry is not None
    assert int(entry["expires_at"].timestamp()) == verified.expires_at
    indexes = await db[REVOKED_TOKENS_COLLECTION].index_information()
    ttl = [i for i in indexes.values() if i["key"] == [("expires_at", 1)]]
    assert ttl
    assert ttl[0]["expireAfterSeconds"] == 0


async def test_usernames_are_unique_in_mongodb(auth_service: AuthHandle) -> None:
    db = auth_service.server.client[auth_service.settings.mongo.database]
    indexes = await db[auth_service.settings.mongo.users_collection].index_information()
    assert any(i["key"] == [("username", 1)] and i.get("unique") for i in indexes.values())


async def test_an_expired_token_is_refused(auth_service: AuthHandle) -> None:
    user = await auth_service.store.create_user(
        "alice", await auth_service.hasher.hash("password1"), roles_for("writer")
    )
    expired, _ = issue_token(
        secret=auth_service.settings.auth.token_secret.get_secret_value(),
        user_id=user.id,
        username=user.username,
        roles=list(user.roles),
        ttl_seconds=60,
        now=int(time.time()) - 3600,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=expired))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (info.value.details() or "")


async def test_a_token_signed_with_another_secret_is_refused(auth_service: AuthHandle) -> None:
    user = await auth_service.store.create_user(
        "alice", await auth_service.hasher.hash("password1"), roles_for("admin")
    )
    forged, _ = issue_token(
        secret="an-attacker-secret-" + uuid.uuid4().hex,
        user_id=user.id,
        username=user.username,
        roles=list(user.roles),
        ttl_seconds=600,
    )
    code = await _status_of(auth_service.stub.Verify(auth_pb2.VerifyRequest(token=forged)))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_revoke_refuses_a_garbage_token(auth_service: AuthHandle) -> None:
    code = await _status_of(auth_service.stub.Revoke(auth_pb2.RevokeRequest(token="garbage")))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_verify_uses_roles_from_the_user_record(auth_service: AuthHandle) -> None:
    """Demoting a user takes effect on the next Verify, whatever the token says."""
    token = await auth_service.token("admin")
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    db = auth_service.server.client[auth_service.settings.mongo.database]
    await db[auth_service.settings.mongo.users_collection].update_one(
        {"_id": verified.user_id}, {"$set": {"roles": ["reader"]}}
    )
    after = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    assert list(after.roles) == [auth_pb2.ROLE_READER]


async def test_a_token_of_a_deleted_user_is_refused(auth_service: AuthHandle) -> None:
    token = await auth_service.token("writer")
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    db = auth_service.server.client[auth_service.settings.mongo.database]
    await db[auth_service.settings.mongo.users_collection].delete_one({"_id": verified.user_id})
    code = await _status_of(auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token)))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_login_upgrades_a_hash_made_with_old_argon2_parameters(
    auth_service: AuthHandle,
) -> None:
    weaker = PasswordHasher.from_parameters(dataclasses.replace(FAST_ARGON2, memory_cost=32))
    user = await auth_service.store.create_user(
        "alice", await weaker.hash("password1"), roles_for("reader")
    )
    await auth_service.stub.Login(auth_pb2.LoginRequest(username="alice", password="password1"))
    stored = await auth_service.store.find_by_id(user.id)
    assert stored is not None
    assert stored.password_hash != user.password_hash
    assert not auth_service.hasher.needs_rehash(stored.password_hash)
    await auth_service.stub.Login(auth_pb2.LoginRequest(username="alice", password="password1"))


async def test_health_reports_serving(auth_service: AuthHandle) -> None:
    health = health_pb2_grpc.HealthStub(auth_service.channel)
    for service in ["", "auth.v1.AuthService"]:
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_auth_service(auth_service: AuthHandle) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(auth_service.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"auth.v1.AuthService", "grpc.health.v1.Health"} <= names


async def test_each_call_logs_one_line_without_passwords_or_tokens(
    auth_service: AuthHandle,
) -> None:
    await auth_service.admin_token()
    with capture_logs() as logs:
        await _register(auth_service, "alice", "secret-password-1")
        login = await auth_service.stub.Login(
            auth_pb2.LoginRequest(username="alice", password="secret-password-1")
        )
        await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=login.access_token))
        await auth_service.revoke(login.access_token)
        await _status_of(
            auth_service.stub.Login(
                auth_pb2.LoginRequest(username="alice", password="wrong-password-1")
            )
        )
    events = [entry["event"] for entry in logs if "rpc" in entry]
    assert events == [
        "user_registered",
        "login_succeeded",
        "token_verified",
        "token_revoked",
        "login_refused",
    ]
    text = repr(logs)
    assert "secret-password-1" not in text
    assert "wrong-password-1" not in text
    assert login.access_token not in text
    assert login.access_token.split(".")[2] not in text


async def test_serve_answers_until_cancelled_then_stops_gracefully(settings: Settings) -> None:
    port, metrics_port = free_port(), free_port()
    task = asyncio.create_task(serve(_on_port(settings, port, metrics_port)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, "auth server never reported SERVING"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as http:
            assert (await http.get("/readyz")).status_code == 200
            assert "outbox_auth_request_seconds" in (await http.get("/metrics")).text
        with capture_logs() as logs:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        code = await _status_of(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    # The graceful stop ran to its end (it used to be cut short by the cancellation).
    assert "auth_server_stopped" in [entry["event"] for entry in logs]


def _on_port(settings: Settings, port: int, metrics_port: int | None = None) -> Settings:
    update = {"port": port, "metrics_port": metrics_port or free_port()}
    return settings.model_copy(update={"auth": settings.auth.model_copy(update=update)})


async def test_calls_are_counted_by_method_and_status_code(auth_service: AuthHandle) -> None:
    """In the server's own registry, not the process-wide default one."""
    registry = auth_service.server.metrics.registry

    def count() -> float:
        labels = {"rpc": "Login", "code": "UNAUTHENTICATED"}
        return registry.get_sample_value("outbox_auth_requests_total", labels) or 0.0

    before = count()
    await _status_of(
        auth_service.stub.Login(auth_pb2.LoginRequest(username="nobody", password="password1"))
    )
    assert count() == before + 1


async def test_anonymous_sign_up_is_refused_by_default(auth_service: AuthHandle) -> None:
    code = await _status_of(_register(auth_service, "mallory", admin_token=""))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert await auth_service.store.find_by_username("mallory") is None


async def test_open_sign_up_creates_readers_only_when_turned_on(settings: Settings) -> None:
    auth = settings.auth.model_copy(update={"open_signup": True, "port": 0})
    server = await start_server(settings.model_copy(update={"auth": auth}), hasher=fast_hasher())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            created = await stub.Register(
                auth_pb2.RegisterRequest(username="alice", password="password1")
            )
            assert created.role == auth_pb2.ROLE_READER
            code = await _status_of(
                stub.Register(
                    auth_pb2.RegisterRequest(
                        username="mallory", password="password1", role=auth_pb2.ROLE_WRITER
                    )
                )
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(grace=0.5)


async def test_verify_returns_the_collections_a_role_is_scoped_to(
    auth_service: AuthHandle,
) -> None:
    await _register(
        auth_service, "alice", role=auth_pb2.ROLE_WRITER, collections=["books", "authors"]
    )
    login = await auth_service.stub.Login(
        auth_pb2.LoginRequest(username="alice", password="password1")
    )
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=login.access_token))
    assert list(verified.collections) == ["books", "authors"]


async def test_failed_logins_never_log_the_username_as_typed(auth_service: AuthHandle) -> None:
    """People type passwords into the username field; refusals log a digest only."""
    typed = "my-Secret-Passw0rd"
    with capture_logs() as logs:
        await _status_of(
            auth_service.stub.Login(auth_pb2.LoginRequest(username=typed, password="password1"))
        )
    assert typed not in repr(logs)
    refused = [entry for entry in logs if entry["event"] == "login_refused"]
    assert len(refused) == 1
    assert refused[0]["username_digest"] == username_digest(typed)


async def test_repeated_failed_logins_for_one_username_are_resource_exhausted_with_retry_after(
    auth_service: AuthHandle,
) -> None:
    await _register(auth_service, "alice", "correct horse")
    free = auth_service.settings.auth.login_free_failures
    for _ in range(free):
        code = await _status_of(
            auth_service.stub.Login(auth_pb2.LoginRequest(username="alice", password="wrong1234"))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await auth_service.stub.Login(
            auth_pb2.LoginRequest(username="alice", password="correct horse")
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(info.value.trailing_metadata() or ())
    assert int(trailing["retry-after"]) >= 1
    # Another username is not affected.
    await _register(auth_service, "bob", "correct horse")
    await auth_service.stub.Login(auth_pb2.LoginRequest(username="bob", password="correct horse"))
    # The throttle keeps no username as typed.
    stored = await auth_service.store_db["login_failures"].find_one({})
    assert stored is not None
    assert "alice" not in repr(stored)
