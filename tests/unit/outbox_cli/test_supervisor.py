"""The dev supervisor restarts crashed services and leaves no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from outbox_cli.supervisor import ServiceSpec, ServiceStartError, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


async def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_killed_service_is_restarted_with_a_new_pid() -> None:
    supervisor = Supervisor()
    await supervisor.start([ServiceSpec("sleeper", SLEEPER, dict(os.environ))])
    try:
        first = supervisor.pids["sleeper"]
        os.kill(first, signal.SIGKILL)
        await _wait_for(lambda: supervisor.pids["sleeper"] != first)
        assert supervisor.restarts("sleeper") == 1
        assert _alive(supervisor.pids["sleeper"])
    finally:
        await supervisor.stop()


async def test_stop_terminates_every_service() -> None:
    supervisor = Supervisor()
    await supervisor.start(
        [ServiceSpec("a", SLEEPER, dict(os.environ)), ServiceSpec("b", SLEEPER, dict(os.environ))]
    )
    pids = list(supervisor.pids.values())
    await supervisor.stop()
    assert not any(_alive(pid) for pid in pids)


async def test_a_service_that_dies_while_starting_is_reported() -> None:
    async def never_ready() -> bool:
        return False

    spec = ServiceSpec("dies", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    spec.ready = never_ready
    supervisor = Supervisor()
    with pytest.raises(ServiceStartError, match="exited with code 3"):
        await supervisor.start([spec])
    await supervisor.stop()


def test_children_die_with_a_killed_supervisor() -> None:
    """Even kill -9 of the supervisor leaves no orphan (PR_SET_PDEATHSIG)."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from outbox_cli.supervisor import ServiceSpec, Supervisor
        async def main():
            s = Supervisor()
            await s.start([ServiceSpec("sleeper", {SLEEPER!r}, dict(os.environ))])
            print("PID", s.pids["sleeper"], flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = ""
    while not line.startswith("PID "):  # structlog's default output shares stdout
        line = parent.stdout.readline()
    child = int(line.split()[1])
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
