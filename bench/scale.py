"""`python -m bench.run --scale`: how cost grows (filled in below)."""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch
from rich.console import Console

from bench.pipeline import Pipeline


async def run_scale(pipeline: Pipeline, es: AsyncElasticsearch, console: Console) -> dict[str, Any]:
    del pipeline, es
    console.log("scale: not implemented yet")
    return {}
