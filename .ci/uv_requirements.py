"""Print a hash-pinned requirements line for uv, taken from uv.lock.

The lock pins every package of the project, uv itself included (the `dev` extra), so
bootstrapping uv with pip needs no second place that names its version or hashes:

    python .ci/uv_requirements.py > uv.txt
    python -m pip install --require-hashes --only-binary=:all: -r uv.txt

The Makefile and the Dockerfile both do exactly that. Standard library only (it runs
before anything is installed).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def uv_requirement(lock: Path) -> str:
    """`uv==V --hash=sha256:...` for every wheel uv.lock records for uv."""
    packages = tomllib.loads(lock.read_text())["package"]
    [uv] = [package for package in packages if package["name"] == "uv"]
    hashes = sorted(wheel["hash"] for wheel in uv.get("wheels", []))
    if not hashes:
        raise SystemExit(f"{lock}: uv has no wheel hashes")
    lines = [f"uv=={uv['version']}", *(f"    --hash={value}" for value in hashes)]
    return " \\\n".join(lines) + "\n"


if __name__ == "__main__":
    lock = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "uv.lock"
    sys.stdout.write(uv_requirement(lock))
