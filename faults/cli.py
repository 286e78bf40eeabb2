"""`python -m faults [SCENARIO ...]`: run fault scenarios, one summary line each.

Exit 0 only when every scenario's audit finds lost, duplicated, drift and misordered all
0 (and, for split relays, no relay stalled beside another's open transaction).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from faults.scenarios import SCENARIOS, FaultConfig, FaultResult, run_faults
from infra.errors import PipelineError

app = typer.Typer(
    name="faults",
    help="Prove exactly-once under faults: load through the API, faults, then an audit.",
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def configs(names: list[str], *, short: bool, seed: int) -> list[FaultConfig]:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(
            f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return [
        replace(config, seed=seed)
        for name in names or list(SCENARIOS)
        for config in SCENARIOS[name](short=short)
    ]


@app.command()
def main(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(help=f"Scenarios to run (default: all): {', '.join(SCENARIOS)}."),
    ] = None,
    short: Annotated[bool, typer.Option(help="The short CI configuration.")] = False,
    history_loss: Annotated[
        bool, typer.Option("--history-loss", help="Same as the `history-loss` scenario.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Changes the fault schedule.")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the servers' data and logs here.")
    ] = None,
) -> None:
    """Run the scenarios one after the other; print one summary line per scenario run."""
    names = list(scenarios or []) + (["history-loss"] if history_loss else [])
    console = Console(stderr=True)
    results: list[FaultResult] = []
    failed = 0
    for config in configs(names, short=short, seed=seed):
        base = data_dir or Path(tempfile.mkdtemp(prefix="outbox-faults-"))
        where = base / config.name if data_dir else base
        try:
            result = asyncio.run(run_faults(config, where, console))
        except PipelineError as e:  # e.g. an audit that could not read Kafka to its end
            print(f"{config.name}: faults FAIL: audit failed: {e} (logs kept in {where})")
            failed += 1
            continue
        for line in result.audit.details() + result.log_excerpts:
            console.print(f"  {line}", markup=False, highlight=False)
        if result.ok and not data_dir:
            shutil.rmtree(where, ignore_errors=True)
        elif not result.ok:
            console.print(f"  servers' and services' logs kept in {where}")
        print(result.summary(), flush=True)
        results.append(result)
    raise typer.Exit(0 if not failed and all(r.ok for r in results) else 1)
