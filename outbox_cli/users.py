"""`outbox users`: manage auth users directly in MongoDB (how the first admin is created)."""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from typing import Annotated, NoReturn

import typer

from auth_grpc.accounts import (
    InvalidArgumentError,
    Role,
    User,
    UserExistsError,
    roles_for,
    validate_password,
    validate_username,
)
from auth_grpc.passwords import PasswordHasher
from auth_grpc.store import MongoUserStore
from infra.errors import PipelineError
from infra.mongo import mongo_client, ping
from infra.settings import Settings

users_app = typer.Typer(help="Manage users of the auth service.", no_args_is_help=True)


class RoleChoice(StrEnum):
    reader = "reader"
    writer = "writer"
    admin = "admin"


_ROLE_OF: dict[RoleChoice, Role] = {
    RoleChoice.reader: "reader",
    RoleChoice.writer: "writer",
    RoleChoice.admin: "admin",
}


@users_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Username: 3-64 of letters, digits, _ . -")],
    role: Annotated[RoleChoice, typer.Option(help="What the user may do.")] = RoleChoice.reader,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a user in MongoDB (no running auth service needed)."""
    settings = Settings()
    try:
        validate_username(name)
        password = _read_password(password_stdin)
        validate_password(password)
    except InvalidArgumentError as e:
        _fail(str(e))
    try:
        user = asyncio.run(_create(settings, name, password, _ROLE_OF[role]))
    except UserExistsError:
        _fail(f"user {name!r} already exists")
    except PipelineError as e:
        _fail(str(e))
    typer.echo(f"created user {user.username!r} (id {user.id}, role {user.role})")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        # One line; the trailing newline (and a Windows CR) is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


async def _create(settings: Settings, username: str, password: str, role: Role) -> User:
    client = mongo_client(settings.mongo, app_name="outbox-cli")
    try:
        await ping(client, settings.mongo)
        store = MongoUserStore(client, settings.mongo)
        await store.ensure_indexes()
        password_hash = await PasswordHasher().hash(password)
        return await store.create_user(username, password_hash, roles_for(role))
    finally:
        await client.close()


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)
