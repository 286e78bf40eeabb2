"""The root of every service's error taxonomy: retriable or fatal, mapped where drivers enter."""

from __future__ import annotations


class PipelineError(Exception):
    """Base for errors this project raises on purpose."""


class RetriableError(PipelineError):
    """Worth trying again after a pause: a connection loss, a timeout, a 429 or 5xx."""


class FatalError(PipelineError):
    """Trying again cannot help: stop the stage and let the supervisor decide."""


class ServerUnreachableError(RetriableError):
    """A dependency did not answer; the message names which and where."""
