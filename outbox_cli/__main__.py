"""`python -m outbox_cli` is `outbox`."""

from outbox_cli.main import app

app()
