"""`python -m faults`: see `faults.cli`."""

from faults.cli import app

app()
