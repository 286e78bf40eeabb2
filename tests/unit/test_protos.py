"""The committed gRPC stubs are exactly what `make protos` generates from the .proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("protos/auth/v1/auth.proto")
GENERATED = ["auth_pb2.py", "auth_pb2.pyi", "auth_pb2_grpc.py", "auth_pb2_grpc.pyi"]


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    """Fails when someone edits auth.proto without running `make protos` (or edits a stub)."""
    bin_dir = Path(sys.executable).parent  # protoc-gen-mypy and protoc-gen-mypy_grpc live here
    if not (bin_dir / "protoc-gen-mypy").exists():
        pytest.fail(f"protoc-gen-mypy not found in {bin_dir}: install the dev extra")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            str(PROTO),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    stale = [
        name
        for name in GENERATED
        if (tmp_path / PROTO.parent / name).read_text() != (ROOT / PROTO.parent / name).read_text()
    ]
    assert not stale, f"stale generated code, run `make protos`: {stale}"
