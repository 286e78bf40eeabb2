"""The indexer service: `outbox indexer` — wiring only.

Builds the adapters (Kafka source and DLQ writer, Elasticsearch sink, parking reporter)
and runs `indexer.pipeline.Indexer` with them; how events are indexed, parked, retried and
acknowledged is described there.
"""

from __future__ import annotations

import asyncio

import structlog

from indexer.consumer import KafkaEventSource, TopicPartitionKey
from indexer.dlq_writer import KafkaDeadLetterWriter
from indexer.metrics import IndexerMetrics
from indexer.parking_report import KafkaParkingReporter
from indexer.pipeline import Indexer
from indexer.progress import IndexerState
from indexer.sink import ElasticsearchSink
from infra.elastic import elastic_client
from infra.health import HealthServer, ProgressMonitor, service_registry
from infra.settings import Settings
from infra.tracing import configure_tracing

log = structlog.get_logger(__name__)


async def serve(settings: Settings, *, state: IndexerState | None = None) -> None:
    """Run the indexer until cancelled (SIGTERM): `outbox indexer`, supervised by `outbox dev`.

    `/healthz`, `/readyz` and `/metrics` answer on the indexer's metrics port meanwhile.
    """
    indexer_settings = settings.indexer
    if state is None:
        state = IndexerState(metrics=IndexerMetrics(service_registry()))
    state.monitor = ProgressMonitor(stall_after_s=indexer_settings.stall_after_seconds)
    health = HealthServer(
        indexer_settings.metrics_host,
        indexer_settings.metrics_port,
        state.readiness,
        registry=state.metrics.registry,
    )
    async with health:
        await _serve(settings, state)


async def _serve(settings: Settings, state: IndexerState) -> None:
    es = elastic_client(settings.es)
    loop = asyncio.get_running_loop()

    def on_lag(lags: dict[TopicPartitionKey, int]) -> None:
        if not loop.is_closed():
            state.lag_measured(lags)

    source = KafkaEventSource(settings, on_lag=on_lag)
    indexer = Indexer(
        settings,
        source=source,
        sink=ElasticsearchSink(es, settings.es),
        dead_letters=KafkaDeadLetterWriter(settings.kafka),
        state=state,
        reporter=KafkaParkingReporter(settings.kafka),
        instance=source.instance_id,
        tracing=configure_tracing("indexer"),
    )
    log.info(
        "indexer_started",
        group_id=settings.indexer.group_id,
        instance_id=source.instance_id,
        metrics_port=settings.indexer.metrics_port,
    )
    try:
        await indexer.run()
    finally:
        await es.close()
        log.info("indexer_stopped")
