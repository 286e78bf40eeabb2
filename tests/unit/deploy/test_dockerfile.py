"""The Dockerfile builds one small, non-root image of the project's runtime, nothing more,
from the lock file, on a base pinned by digest."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import typer.main
from packaging.markers import Marker

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


DIGEST_PINNED = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")


def uv_syncs(stage: Stage) -> list[str]:
    """The `uv sync ...` commands of a stage's RUN instructions, mount options dropped."""
    return [
        command.strip()
        for run in stage.all("RUN")
        for command in re.split(r"&&", re.sub(r"^(?:--mount=\S+\s+)+", "", run))
        if command.strip().startswith("uv sync")
    ]


def test_multi_stage_on_the_same_slim_python_pinned_by_digest(stages: list[Stage]) -> None:
    """The runtime copies the builder's venv, so both share one interpreter path; the base
    is pinned by digest, so a rebuild cannot pick up another OS or Python silently."""
    assert len(stages) >= 2
    [base] = {stage.base for stage in stages}
    assert DIGEST_PINNED.match(base), base
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
    assert env["OUTBOX_ENV"] == "prod", "secure by default wherever the image runs"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["OUTBOX_LOG_FORMAT"] == "json"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert {key for key in env if key.startswith("OUTBOX_")} <= setting_names()


def test_installs_the_locked_dependencies_before_the_source(stages: list[Stage]) -> None:
    """`uv sync --locked` twice: the dependencies from uv.lock alone, then, after `COPY . .`,
    the project (not editable); never an extra, never a resolver run (`pip install`)."""
    builder = next(stage for stage in stages if stage.name == "builder")
    keywords = [keyword for keyword, _ in builder.instructions]
    first_sync = next(
        i for i, (k, a) in enumerate(builder.instructions) if k == "RUN" and "uv sync" in a
    )
    copy_source = builder.instructions.index(("COPY", ". ."))
    assert first_sync < copy_source < len(keywords) - 1
    deps_only, project = uv_syncs(builder)
    for command in (deps_only, project):
        words = shlex.split(command)
        assert "--locked" in words
        assert "--no-editable" in words
        assert not any(w.startswith(("--extra", "--all-extras", "--group")) for w in words)
    assert "--no-install-project" in shlex.split(deps_only)
    assert "--no-install-project" not in shlex.split(project)
    dependency_layer = builder.instructions[first_sync][1]
    assert "source=uv.lock" in dependency_layer
    assert "source=pyproject.toml" in dependency_layer
    assert builder.env()["UV_PROJECT_ENVIRONMENT"] == "/opt/venv"
    for run in builder.all("RUN"):
        assert not re.search(r"\bpip3? install\b(?!.*--require-hashes)", run), run
    text = DOCKERFILE.read_text()
    for name in EMBEDDED_SERVERS:
        assert name not in text


def _runtime_closure() -> set[str]:
    """Every package uv.lock installs for the project without extras, on this platform
    (Linux, CPython 3.11, like the image): dependencies whose marker is false are left out."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    wanted, seen = ["outbox-pipeline"], set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in packages[name].get("dependencies", []):
            if "marker" in dep and not Marker(dep["marker"]).evaluate():
                continue
            wanted.append(dep["name"])
            for extra in dep.get("extra", []):
                wanted.extend(
                    d["name"] for d in packages[dep["name"]]["optional-dependencies"][extra]
                )
    return seen


@pytest.fixture(scope="module")
def image_venv(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/venv as the builder makes it: its `uv sync` commands run outside Docker, the
    first with only the files its bind mounts provide, the second on the build context."""
    builder = next(stage for stage in stages if stage.name == "builder")
    deps_only, project = uv_syncs(builder)
    tmp = tmp_path_factory.mktemp("image")
    workdir, venv = tmp / "src", tmp / "opt-venv"
    workdir.mkdir()
    env = {
        **os.environ,
        **{k: v for k, v in builder.env().items() if k.startswith("UV_")},
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "copy",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # the lock's uv
    }
    env.pop("VIRTUAL_ENV", None)

    def run(command: str) -> None:
        result = subprocess.run(
            shlex.split(command),
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"

    for name in ("uv.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, workdir / name)
    run(deps_only)
    assert not (venv / "bin" / "outbox").exists(), "the project came before its source"
    for relative in DockerIgnore.read().context_files():
        target = workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    run(project)
    return venv


def test_the_image_venv_holds_exactly_the_runtime_closure_of_the_lock(image_venv: Path) -> None:
    """What the builder installs is uv.lock's runtime closure: no test tools, no stand-ins,
    no bench tools; and the `outbox` command works from it."""
    listing = subprocess.run(
        [
            str(image_venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    installed = {re.sub(r"[-_.]+", "-", name).lower() for name in listing}
    assert installed == _runtime_closure()
    for absent in ("pytest", "secantusdb", "noida-db", "httpx", "psutil", "uv", "mypy"):
        assert absent not in installed
    result = subprocess.run(
        [str(image_venv / "bin" / "outbox"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


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
    for path in (
        "pyproject.toml",
        "uv.lock",
        "README.md",
        ".ci/uv_requirements.py",
        "api/main.py",
        "protos/auth/v1/auth_pb2.py",
    ):
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
