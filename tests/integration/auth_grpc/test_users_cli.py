"""`outbox users create`: writes users straight to MongoDB; clear errors, never a traceback."""

from __future__ import annotations

import asyncio

import argon2
import grpc
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from infra.devstack import free_port
from infra.settings import Settings, settings_to_env
from outbox_cli.main import app
from protos.auth.v1 import auth_pb2
from tests.fixtures.auth import AuthHandle

pytestmark = pytest.mark.integration


async def _outbox(settings: Settings, *args: str, stdin: str = "") -> Result:
    """Run the CLI in a worker thread: the command calls asyncio.run() itself."""
    env = settings_to_env(settings)
    runner = CliRunner()
    return await asyncio.to_thread(
        lambda: runner.invoke(app, list(args), input=stdin, env=env, catch_exceptions=False)
    )


async def test_create_writes_an_argon2id_user_with_the_expanded_roles(
    settings: Settings, auth_service: AuthHandle
) -> None:
    result = await _outbox(
        settings, "users", "create", "root", "--role", "admin", "--password-stdin",
        stdin="bootstrap-password\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "created user 'root'" in result.output
    user = await auth_service.store.find_by_username("root")
    assert user is not None
    assert user.roles == ("reader", "writer", "admin")
    assert user.password_hash.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(user.password_hash, "bootstrap-password")


async def test_the_bootstrapped_admin_can_register_writers_through_grpc(
    settings: Settings, auth_service: AuthHandle
) -> None:
    result = await _outbox(
        settings, "users", "create", "root", "--role", "admin", "--password-stdin",
        stdin="bootstrap-password\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    login = await auth_service.stub.Login(
        auth_pb2.LoginRequest(username="root", password="bootstrap-password")
    )
    created = await auth_service.stub.Register(
        auth_pb2.RegisterRequest(
            username="writer1",
            password="password1",
            role=auth_pb2.ROLE_WRITER,
            admin_token=login.access_token,
        )
    )
    assert created.role == auth_pb2.ROLE_WRITER


async def test_without_password_stdin_the_password_is_prompted_twice(
    settings: Settings, auth_service: AuthHandle
) -> None:
    result = await _outbox(
        settings, "users", "create", "alice", stdin="first-password\nother-password\n"
        "second-password\nsecond-password\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert "second-password" not in result.output  # hidden input is not echoed
    user = await auth_service.store.find_by_username("alice")
    assert user is not None
    assert user.roles == ("reader",)
    assert argon2.PasswordHasher().verify(user.password_hash, "second-password")


async def test_an_existing_user_is_a_clear_error_with_exit_code_1(settings: Settings) -> None:
    args = ("users", "create", "alice", "--password-stdin")
    assert (await _outbox(settings, *args, stdin="password-one\n")).exit_code == 0
    result = await _outbox(settings, *args, stdin="password-two\n")
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "password", "message"),
    [("x", "password-one", "username"), ("alice", "short", "at least 8")],
)
async def test_invalid_input_is_refused_before_touching_mongodb(
    settings: Settings, name: str, password: str, message: str
) -> None:
    result = await _outbox(
        settings, "users", "create", name, "--password-stdin", stdin=f"{password}\n"
    )
    assert result.exit_code == 1
    assert message in result.output


async def test_unreachable_mongodb_is_a_clear_error_with_exit_code_1(settings: Settings) -> None:
    dead = settings.model_copy(
        update={
            "mongo": settings.mongo.model_copy(
                update={
                    "uri": SecretStr(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"),
                    "server_selection_timeout_ms": 300,
                }
            )
        }
    )
    result = await _outbox(dead, "users", "create", "alice", "--password-stdin", stdin="pw-12345\n")
    assert result.exit_code == 1
    assert "unreachable" in result.output
    assert "Traceback" not in result.output


async def _token(auth: AuthHandle, username: str, password: str) -> str:
    login = await auth.stub.Login(auth_pb2.LoginRequest(username=username, password=password))
    return login.access_token


async def _verify_code(auth: AuthHandle, token: str) -> grpc.StatusCode:
    try:
        await auth.stub.Verify(auth_pb2.VerifyRequest(token=token))
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_create_with_collections_scopes_the_role(
    settings: Settings, auth_service: AuthHandle
) -> None:
    result = await _outbox(
        settings, "users", "create", "alice", "--role", "writer",
        "--collections", "books,authors", "--password-stdin", stdin="password-one\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "books, authors" in result.output
    token = await _token(auth_service, "alice", "password-one")
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    assert list(verified.collections) == ["books", "authors"]


async def test_create_refuses_an_invalid_collection_in_the_scope(settings: Settings) -> None:
    result = await _outbox(
        settings, "users", "create", "alice", "--collections", "books,Bad!",
        "--password-stdin", stdin="password-one\n",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "collection" in result.output


async def test_disable_stops_the_users_tokens_and_logins_and_enable_restores_them(
    settings: Settings, auth_service: AuthHandle
) -> None:
    name = await auth_service.create_user("writer", password="password-one")
    token = await _token(auth_service, name, "password-one")
    result = await _outbox(settings, "users", "disable", name)
    assert result.exit_code == 0, result.output
    assert await _verify_code(auth_service, token) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError):
        await _token(auth_service, name, "password-one")
    assert (await _outbox(settings, "users", "enable", name)).exit_code == 0
    assert await _verify_code(auth_service, token) == grpc.StatusCode.OK


async def test_delete_removes_the_user_and_their_tokens_stop_verifying(
    settings: Settings, auth_service: AuthHandle
) -> None:
    name = await auth_service.create_user("admin", password="password-one")
    token = await _token(auth_service, name, "password-one")
    result = await _outbox(settings, "users", "delete", name)
    assert result.exit_code == 0, result.output
    assert await auth_service.store.find_by_username(name) is None
    assert await _verify_code(auth_service, token) == grpc.StatusCode.UNAUTHENTICATED


async def test_set_role_demotes_at_once_and_can_scope_to_collections(
    settings: Settings, auth_service: AuthHandle
) -> None:
    name = await auth_service.create_user("admin", password="password-one")
    token = await _token(auth_service, name, "password-one")
    result = await _outbox(
        settings, "users", "set-role", name, "--role", "writer", "--collections", "books"
    )
    assert result.exit_code == 0, result.output
    verified = await auth_service.stub.Verify(auth_pb2.VerifyRequest(token=token))
    assert list(verified.roles) == [auth_pb2.ROLE_READER, auth_pb2.ROLE_WRITER]
    assert list(verified.collections) == ["books"]


@pytest.mark.parametrize(
    "command", [["disable"], ["enable"], ["delete"], ["set-role", "--role", "reader"]]
)
async def test_an_unknown_user_is_a_clear_error_with_exit_code_1(
    settings: Settings, command: list[str]
) -> None:
    result = await _outbox(settings, "users", command[0], "nobody-here", *command[1:])
    assert result.exit_code == 1
    assert "no user 'nobody-here'" in result.output
