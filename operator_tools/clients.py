"""Connections for one operator command: short timeouts, unreachable servers named clearly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from elasticsearch import ApiError, AsyncElasticsearch, TransportError
from pydantic import SecretStr
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from infra.elastic import elastic_client
from infra.errors import ServerUnreachableError
from infra.kafka import admin_client
from infra.mongo import MongoClient, mongo_client
from infra.settings import Settings, redact_uri

# Operators want an answer in seconds, not the services' patient defaults.
CONNECT_TIMEOUT_S = 3.0


def operator_settings(settings: Settings) -> Settings:
    """`settings` with short MongoDB server selection and quiet Kafka clients."""
    mongo = settings.mongo.model_copy(
        update={
            "server_selection_timeout_ms": min(
                settings.mongo.server_selection_timeout_ms, int(CONNECT_TIMEOUT_S * 1000)
            )
        }
    )
    kafka = settings.kafka.model_copy(
        # librdkafka prints every failed connection attempt; the command reports it once.
        update={"extra": {"log_level": SecretStr("0"), **settings.kafka.extra}}
    )
    return settings.model_copy(update={"mongo": mongo, "kafka": kafka})


@dataclass
class OperatorClients:
    """The clients one command uses; `settings` already carries the operator timeouts."""

    settings: Settings
    mongo: MongoClient
    es: AsyncElasticsearch

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        return self.mongo[self.settings.mongo.database]

    async def ping_mongo(self) -> None:
        try:
            await self.mongo.admin.command("ping")
        except PyMongoError as e:
            raise ServerUnreachableError(
                f"MongoDB at {self.settings.mongo.display_uri} is unreachable ({type(e).__name__})"
            ) from e

    async def ping_es(self) -> None:
        try:
            await self.es.options(request_timeout=CONNECT_TIMEOUT_S).info()
        except (TransportError, ApiError) as e:
            raise ServerUnreachableError(
                f"Elasticsearch at {redact_uri(self.settings.es.url)} is unreachable "
                f"({type(e).__name__})"
            ) from e

    async def ping_kafka(self) -> None:
        def _list() -> None:
            admin_client(self.settings.kafka).list_topics(timeout=CONNECT_TIMEOUT_S)

        try:
            await asyncio.to_thread(_list)
        except KafkaException as e:
            raise ServerUnreachableError(
                f"Kafka at {self.settings.kafka.bootstrap} is unreachable"
            ) from e

    async def ping(self, *, mongo: bool = True, es: bool = True, kafka: bool = True) -> None:
        """Check the servers a command needs, all at once; the first failure is raised."""
        checks = []
        if mongo:
            checks.append(self.ping_mongo())
        if es:
            checks.append(self.ping_es())
        if kafka:
            checks.append(self.ping_kafka())
        await asyncio.gather(*checks)


@asynccontextmanager
async def open_clients(
    settings: Settings, *, app_name: str = "outbox-ops"
) -> AsyncIterator[OperatorClients]:
    """Clients with operator timeouts, closed on exit. Connects lazily; call `ping`."""
    ops = operator_settings(settings)
    mongo = mongo_client(ops.mongo, app_name=app_name)
    es = elastic_client(ops.es)
    try:
        yield OperatorClients(settings=ops, mongo=mongo, es=es)
    finally:
        await es.close()
        await mongo.close()
