"""`outbox`: run the services, the dev stack and the operator commands."""

from __future__ import annotations

import typer

from infra.settings import Settings
from outbox_cli.services import run_service

app = typer.Typer(
    name="outbox",
    help="Transactional outbox pipeline: MongoDB → Kafka (exactly once) → Elasticsearch.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


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
