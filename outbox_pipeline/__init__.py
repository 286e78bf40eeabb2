"""Tools for users of outbox-pipeline: `outbox_pipeline.testing`, a pytest plugin."""
