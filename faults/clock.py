"""Skewed process clocks for fault runs and tests: libfaketime through LD_PRELOAD.

The `libfaketime` package (a dev dependency) ships the shared library; Debian's
`faketime` package installs it too. A process started with `skewed_clock_env(+2.0)` sees
a wall clock two seconds ahead of the machine's (its monotonic clock is left alone, so
timeouts and backoffs behave). librdkafka's message timestamps, Python's `datetime.now()`
and `time.time()` all follow it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

LIBRARY = "libfaketime.so.1"
DEBIAN_PATHS = (
    Path("/usr/lib/x86_64-linux-gnu/faketime") / LIBRARY,
    Path("/usr/lib/aarch64-linux-gnu/faketime") / LIBRARY,
    Path("/usr/lib/faketime") / LIBRARY,
)


class FaketimeMissingError(RuntimeError):
    """Neither the libfaketime package nor Debian's faketime is installed."""


def faketime_library() -> Path:
    """The libfaketime shared library: from the Python package, else Debian's."""
    spec = importlib.util.find_spec("libfaketime")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "vendor" / "libfaketime" / "src" / LIBRARY
        if shipped.exists():
            return shipped
    for path in DEBIAN_PATHS:
        if path.exists():
            return path
    raise FaketimeMissingError(
        "libfaketime not found: `pip install libfaketime` (in the dev extras) or "
        "`apt-get install faketime`"
    )


def skewed_clock_env(offset_s: float) -> dict[str, str]:
    """Environment variables that move a child process's wall clock by `offset_s`."""
    if offset_s == 0:
        return {}
    return {
        "LD_PRELOAD": str(faketime_library()),
        "FAKETIME": f"{offset_s:+.3f}",
        "DONT_FAKE_MONOTONIC": "1",
    }
