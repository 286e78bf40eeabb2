"""Standard-library log lines (uvicorn, grpc, elastic_transport) come out like our own.

The logging set-up is process-wide (root handlers, structlog's global configuration,
stderr), so each case runs in a child process exactly as a service configures it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = """
import logging, structlog
from infra.logging import configure_logging
from infra.settings import LogSettings
configure_logging(LogSettings(format="json", level="info"), service="indexer")
"""


def _log_lines(code: str) -> list[dict[str, object]]:
    """Run `code` after a JSON-mode configure_logging; the JSON lines it wrote to stderr."""
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == ""
    return [json.loads(line) for line in result.stderr.splitlines()]


def test_a_library_exception_is_one_json_line_with_its_traceback() -> None:
    """No `_record`/`_from_structlog` internals, and the traceback text survives."""
    [line] = _log_lines(
        """
        structlog.contextvars.bind_contextvars(trace_id="abc123")
        try:
            raise ConnectionError("connection refused by es:9200")
        except ConnectionError:
            logging.getLogger("elastic_transport").exception("node %s failed", "es:9200")
        """
    )
    assert line["event"] == "node es:9200 failed"
    assert line["level"] == "error"
    assert line["logger"] == "elastic_transport"
    assert line["service"] == "indexer"
    assert line["trace_id"] == "abc123"
    assert "timestamp" in line
    exception = line["exception"]
    assert isinstance(exception, str)
    assert exception.startswith("Traceback (most recent call last):")
    assert "ConnectionError: connection refused by es:9200" in exception
    assert not any(key.startswith("_") for key in line)
    assert "exc_info" not in line


def test_library_and_own_lines_share_one_shape() -> None:
    """A warning from a library and one from our code carry the same keys."""
    library, own = _log_lines(
        """
        logging.getLogger("uvicorn.error").warning("shutting down in %d s", 3)
        structlog.get_logger("api").warning("api_stopping", seconds=3)
        """
    )
    assert library["event"] == "shutting down in 3 s"
    assert own["event"] == "api_stopping"
    for line in (library, own):
        assert {"event", "level", "timestamp", "service"} <= set(line)
        assert line["level"] == "warning"
        assert not any(key.startswith("_") for key in line)


def test_library_info_lines_stay_out() -> None:
    """Libraries speak from WARNING up: their INFO chatter is not our log."""
    assert _log_lines('logging.getLogger("grpc._cython").info("channel created")') == []
