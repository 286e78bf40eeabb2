"""structlog, configured once per process: JSON outside a TTY, readable console in one.

Context (event_id, collection, document_id, trace_id, ...) is bound with
`structlog.contextvars.bind_contextvars` and appears on every line of that unit of work.
"""

from __future__ import annotations

import logging
import sys

import structlog

from infra.settings import LogSettings


def configure_logging(settings: LogSettings, *, service: str) -> None:
    """Set up structlog and route the standard library's logging through it."""
    use_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    level = getattr(logging, settings.level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: same pipeline, same stream, less noise.
    # Their records get the shared processors plus the logger's name and the traceback as
    # text (the record's exc_info tuple would otherwise be rendered as a useless repr);
    # `remove_processors_meta` drops ProcessorFormatter's own `_record`/`_from_structlog`.
    foreign_pre_chain: list[structlog.typing.Processor] = [
        *shared,
        structlog.stdlib.add_logger_name,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign_pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
