"""The Dockerfile builds one small, non-root image of the project's runtime, nothing more."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import typer.main

from outbox_cli.main import app
from tests.unit.deploy.deploy_files import (
    DOCKERFILE,
    ROOT,
    DockerIgnore,
    Stage,
    dockerfile_stages,
    exec_form,
    setting_names,
)

EMBEDDED_SERVERS = ("secantusdb", "noida-db", "noida_db")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def pip_installs(stages: list[Stage]) -> list[str]:
    return [
        run for stage in stages for run in stage.all("RUN") if re.search(r"\bpip3? install\b", run)
    ]


def test_multi_stage_on_the_same_slim_python(stages: list[Stage]) -> None:
    """The runtime copies the builder's venv, so both must share one interpreter path."""
    assert len(stages) >= 2
    assert {stage.base for stage in stages} == {"python:3.11-slim"}
    builder_names = {stage.name for stage in stages[:-1]}
    copies = stages[-1].all("COPY")
    assert any(
        re.match(rf"--from=({'|'.join(filter(None, builder_names))})\s+/opt/venv\s", c)
        for c in copies
    )
    assert not stages[-1].all("RUN") or all("pip" not in r for r in stages[-1].all("RUN"))


def test_runs_as_a_non_root_user(runtime: Stage) -> None:
    """USER is the uid the image creates, never root."""
    user = runtime.last("USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid not in {"0", "root"}
    created = " ".join(runtime.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", created)
    assert uid == "10001"


def test_entrypoint_is_outbox_and_cmd_a_real_command(runtime: Stage) -> None:
    """`docker run IMAGE relay` runs `outbox relay`; the default CMD is a registered command."""
    entrypoint = runtime.last("ENTRYPOINT")
    cmd = runtime.last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    assert exec_form(entrypoint) == ["outbox"]
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert exec_form(cmd)[0] in commands


def test_runtime_environment(runtime: Stage) -> None:
    """No .pyc writes, unbuffered logs, JSON log lines; OUTBOX_* names are real settings."""
    env = runtime.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["OUTBOX_LOG_FORMAT"] == "json"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert {key for key in env if key.startswith("OUTBOX_")} <= setting_names()


def test_installs_the_project_without_dev_or_embedded_extras(stages: list[Stage]) -> None:
    """`pip install .`: the image talks to real servers and carries no test tooling."""
    installs = pip_installs(stages)
    assert installs
    for run in installs:
        assert "[" not in run, f"extras installed: {run}"
        assert not re.search(r"\s-e\s|--editable", run), f"editable install: {run}"
        assert re.search(r"\bpip3? install (?:--\S+ )*\.(?:\s|$)", run), run
    text = DOCKERFILE.read_text()
    for name in EMBEDDED_SERVERS:
        assert name not in text


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    """.env, the venv, git history, data dirs and tests never reach the image."""
    ignore = DockerIgnore.read()
    for path in (
        ".env",
        ".env.prod",
        ".venv/bin/python",
        ".git/HEAD",
        ".outbox-data/x",
        "tests/conftest.py",
        "api/__pycache__/main.cpython-311.pyc",
    ):
        assert ignore.excludes(path), path
    for path in ("pyproject.toml", "README.md", "api/main.py", "protos/auth/v1/auth_pb2.py"):
        assert not ignore.excludes(path), path


def test_the_build_context_builds_a_wheel_with_every_package(tmp_path: Path) -> None:
    """What `COPY . .` sends is enough for `pip install .`: every package pyproject lists
    (that exists in the tree) and the committed gRPC stubs end up in the wheel."""
    context = tmp_path / "context"
    for relative in DockerIgnore.read().context_files():
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for package in packages:
        if (ROOT / package / "__init__.py").exists():
            assert f"{package}/__init__.py" in names, package
    assert "protos/auth/v1/auth_pb2.py" in names
    assert "protos/auth/v1/auth_pb2_grpc.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "outbox = outbox_cli.main:app" in zipfile.ZipFile(wheel).read(entry_points).decode()
