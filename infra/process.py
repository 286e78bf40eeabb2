"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1
# Resolved now, not in the child: between fork and exec only the prctl call itself is safe.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """`preexec_fn` for Popen: on Linux, SIGTERM the child when its parent dies (even kill -9).

    Linux ties the signal to the *thread* that forked the child, so start long-lived
    children from a thread that lives as long as they should (the main thread, or an
    executor thread that lasts as long as the event loop).
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def kill(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL and reap: no shutdown code runs (the fault tests' crash)."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM, wait (so ports and data dirs are free again), SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill(process)
