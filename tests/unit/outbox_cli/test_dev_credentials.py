"""The dev admin's credentials file is private from the moment it exists."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox_cli.dev import write_private_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave a plainly created file world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_the_file_is_created_owner_only_even_under_an_open_umask(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "dev-credentials"
    write_private_file(path, "dev:secret\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "dev:secret\n"


def test_a_symlink_planted_at_the_path_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    path = tmp_path / "dev-credentials"
    path.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_private_file(path, "dev:secret\n")
    assert not target.exists()


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "dev-credentials"
    path.write_text("someone else's\n")
    with pytest.raises(FileExistsError):
        write_private_file(path, "dev:secret\n")
    assert path.read_text() == "someone else's\n"
