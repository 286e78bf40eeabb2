"""Which names a REST collection may take, and which MongoDB collections are the services' own.

One rule for every stage: the API refuses other names, the indexer dead-letters events
that carry them, and the operator tools skip the internal collections.
"""

from __future__ import annotations

import re

from infra.settings import MongoSettings

# Lowercase letter first, then up to 63 of a-z 0-9 _ -: valid as a MongoDB collection, a
# Kafka topic suffix and an Elasticsearch index name part. Never a `.`, which keeps
# `system.*` collections out of reach.
COLLECTION_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# Collections the services keep beside the documents, in the same database.
LEASES_COLLECTION = "relay_leases"  # outbox_relay.lease
REVOKED_TOKENS_COLLECTION = "revoked_tokens"  # auth_grpc.store
LOGIN_FAILURES_COLLECTION = "login_failures"  # auth_grpc.login_throttle
IDEMPOTENCY_KEYS_COLLECTION = "idempotency_keys"  # api.document_store
SERVICE_COLLECTIONS = frozenset(
    {
        LEASES_COLLECTION,
        REVOKED_TOKENS_COLLECTION,
        LOGIN_FAILURES_COLLECTION,
        IDEMPOTENCY_KEYS_COLLECTION,
    }
)


def is_collection_name(name: str) -> bool:
    """A name a REST collection may have (not yet saying it is not reserved)."""
    return COLLECTION_RE.fullmatch(name) is not None


def reserved_collections(mongo: MongoSettings) -> frozenset[str]:
    """Collections REST clients may neither read nor write: the outbox, users, the services'."""
    return SERVICE_COLLECTIONS | {mongo.outbox_collection, mongo.users_collection}


def is_document_collection(name: str, mongo: MongoSettings) -> bool:
    """A collection that holds REST documents: a valid name that is not reserved."""
    return is_collection_name(name) and name not in reserved_collections(mongo)
