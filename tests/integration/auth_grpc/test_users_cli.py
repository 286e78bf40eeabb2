"""`outbox users create`: writes users straight to MongoDB; clear errors, never a traceback."""

from __future__ import annotations

import asyncio

import argon2
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
