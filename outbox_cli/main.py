"""`outbox`: run the services, the dev stack and the operator commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.settings import Settings
from outbox_cli.ops import audit, dlq_app, reconcile, reindex, replay, status
from outbox_cli.services import run_service
from outbox_cli.users import users_app

app = typer.Typer(
    name="outbox",
    help="Transactional outbox pipeline: MongoDB → Kafka (exactly once) → Elasticsearch.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(users_app, name="users")
app.command()(status)
app.command()(replay)
app.command()(reconcile)
app.command()(reindex)
app.add_typer(dlq_app, name="dlq")
app.command()(audit)


@app.command()
def api() -> None:
    """Run the REST API (uvicorn)."""
    from api.main import serve  # noqa: PLC0415 - each command imports only its own service

    run_service("api", serve, Settings())


@app.command()
def auth() -> None:
    """Run the gRPC auth service."""
    from auth_grpc.server import serve  # noqa: PLC0415

    run_service("auth", serve, Settings())


@app.command()
def relay() -> None:
    """Run the outbox relay (change stream → Kafka transactions)."""
    from outbox_relay.service import serve  # noqa: PLC0415

    run_service("relay", serve, Settings())


@app.command()
def indexer() -> None:
    """Run the Elasticsearch indexer (Kafka → Elasticsearch)."""
    from indexer.service import serve  # noqa: PLC0415

    run_service("indexer", serve, Settings())


@app.command()
def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where the embedded servers keep data and logs.")
    ] = Path(".outbox-data"),
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Pick free ports instead of the defaults.")
    ] = False,
    external: Annotated[
        bool,
        typer.Option("--external", help="Use the OUTBOX_* servers instead of embedded ones."),
    ] = False,
) -> None:
    """Run the embedded servers and every service, supervised; Ctrl-C stops everything."""
    from outbox_cli.dev import dev_main  # noqa: PLC0415

    dev_main(data_dir, free_ports=free_ports, external=external)
