"""The README stays true to the code: every setting and every command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from pydantic import BaseModel

from infra.settings import Settings, settings_to_env
from outbox_cli.main import app

README = (Path(__file__).parents[2] / "README.md").read_text()


def _documented_variables() -> set[str]:
    names: set[str] = set()
    for line in README.splitlines():
        if line.startswith("| `OUTBOX_"):
            names.update(re.findall(r"`(OUTBOX_[A-Z_]+)`", line.split("|")[1]))
    return names


def _every_setting() -> set[str]:
    """Every OUTBOX_* name, the unset optional ones (TLS files, passwords) included."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    names = set(settings_to_env(settings))
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if isinstance(section, BaseModel):
            names.update(
                f"OUTBOX_{section_name.upper()}_{field.upper()}"
                for field in type(section).model_fields
                if getattr(section, field) is None
            )
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    every = _every_setting()
    assert every - _documented_variables() == set()
    assert _documented_variables() - every == set()


def test_every_cli_command_is_in_the_readme() -> None:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    for name in command.commands:
        assert f"`outbox {name}" in README or f"`{name}`" in README, name


def test_the_readme_opens_with_the_two_commands() -> None:
    head = README[:400]
    assert "make run" in head
    assert "make test" in head
