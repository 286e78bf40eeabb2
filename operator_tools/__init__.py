"""Operator use cases behind `outbox status|replay|reconcile|reindex|dlq` and `/v1/ops`.

Pure logic plus thin adapters over MongoDB, Kafka and Elasticsearch; no CLI or HTTP code.
Anything that changes state re-emits events through Kafka (never writes to
Elasticsearch behind the indexer's back), except `reindex`, which builds a new index
from MongoDB with external versions and swaps the alias.
"""
