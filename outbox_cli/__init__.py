"""The `outbox` command."""
