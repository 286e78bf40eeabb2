"""How a long use case reports progress; the CLI plugs a rich progress bar in."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """`start` once per phase (total None when unknown), then `advance` as work is done."""

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    """Reports nothing (HTTP endpoints, tests)."""

    def start(self, description: str, total: int | None) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None
