"""`outbox users`: manage auth users directly in MongoDB (how the first admin is created).

`create`, `set-role`, `disable`, `enable` and `delete` act at once: the auth service's
`Verify` reads the user record on every call, so a demoted, disabled or deleted user's
tokens stop working within the API's Verify cache (`OUTBOX_AUTH_VERIFY_CACHE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, NoReturn, TypeVar

import typer

from auth_grpc.accounts import (
    InvalidArgumentError,
    Role,
    User,
    UserExistsError,
    roles_for,
    validate_collections,
    validate_password,
    validate_username,
)
from auth_grpc.passwords import PasswordHasher
from auth_grpc.store import MongoUserStore
from infra.errors import PipelineError
from infra.mongo import mongo_client, ping
from infra.settings import Settings

users_app = typer.Typer(help="Manage users of the auth service.", no_args_is_help=True)

T = TypeVar("T")


class RoleChoice(StrEnum):
    reader = "reader"
    writer = "writer"
    admin = "admin"


_ROLE_OF: dict[RoleChoice, Role] = {
    RoleChoice.reader: "reader",
    RoleChoice.writer: "writer",
    RoleChoice.admin: "admin",
}

NameArg = Annotated[str, typer.Argument(help="Username: 3-64 of letters, digits, _ . -")]
CollectionsOption = Annotated[
    str,
    typer.Option(
        help="Comma-separated collections the role applies to (default: every collection)."
    ),
]


@users_app.command("create")
def create(
    name: NameArg,
    role: Annotated[RoleChoice, typer.Option(help="What the user may do.")] = RoleChoice.reader,
    collections: CollectionsOption = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a user in MongoDB (no running auth service needed)."""
    settings = Settings()
    try:
        validate_username(name)
        scope = _scope(collections)
        password = _read_password(password_stdin)
        validate_password(password)
    except InvalidArgumentError as e:
        _fail(str(e))
    try:
        user = _run(settings, lambda store: _create(store, name, password, _ROLE_OF[role], scope))
    except UserExistsError:
        _fail(f"user {name!r} already exists")
    typer.echo(f"created user {user.username!r} (id {user.id}, role {user.role}{_on(scope)})")


@users_app.command("set-role")
def set_role(
    name: NameArg,
    role: Annotated[RoleChoice, typer.Option(help="The user's new role.")],
    collections: CollectionsOption = "",
) -> None:
    """Change a user's role (and its collection scope); takes effect on their next request."""
    try:
        scope = _scope(collections)
    except InvalidArgumentError as e:
        _fail(str(e))
    roles = roles_for(_ROLE_OF[role])
    _found(_run(Settings(), lambda store: store.set_role(name, roles, scope)), name)
    typer.echo(f"user {name!r} is now {role.value}{_on(scope)}")


@users_app.command("disable")
def disable(name: NameArg) -> None:
    """Refuse the user's logins and tokens until `outbox users enable`."""
    _found(_run(Settings(), lambda store: store.set_disabled(name, True)), name)
    typer.echo(f"user {name!r} is disabled")


@users_app.command("enable")
def enable(name: NameArg) -> None:
    """Let a disabled user log in again (their unexpired tokens work again too)."""
    _found(_run(Settings(), lambda store: store.set_disabled(name, False)), name)
    typer.echo(f"user {name!r} is enabled")


@users_app.command("delete")
def delete(name: NameArg) -> None:
    """Delete the user; their tokens stop verifying."""
    _found(_run(Settings(), lambda store: store.delete_user(name)), name)
    typer.echo(f"user {name!r} is deleted")


def _scope(collections: str) -> tuple[str, ...]:
    return validate_collections([c.strip() for c in collections.split(",") if c.strip()])


def _on(scope: tuple[str, ...]) -> str:
    return f" on {', '.join(scope)}" if scope else ""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        # One line; the trailing newline (and a Windows CR) is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _run(settings: Settings, action: Callable[[MongoUserStore], Awaitable[T]]) -> T:
    """Run `action` on a user store over a fresh client; clear errors, never a traceback."""

    async def run() -> T:
        client = mongo_client(settings.mongo, app_name="outbox-cli")
        try:
            await ping(client, settings.mongo)
            store = MongoUserStore(client, settings.mongo)
            await store.ensure_indexes()
            return await action(store)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except PipelineError as e:
        _fail(str(e))


async def _create(
    store: MongoUserStore, username: str, password: str, role: Role, scope: tuple[str, ...]
) -> User:
    password_hash = await PasswordHasher().hash(password)
    return await store.create_user(username, password_hash, roles_for(role), scope)


def _found(found: bool, name: str) -> None:
    if not found:
        _fail(f"no user {name!r}")


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)
