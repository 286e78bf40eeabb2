"""Kafka's error taxonomy mapped onto ours where it enters."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from infra.errors import FatalError, RetriableError
from infra.kafka import AbortTransactionError, map_kafka_error


def error(**flags: bool) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._STATE, "x", **flags))


def test_a_fenced_producer_is_fatal_even_when_also_retriable() -> None:
    mapped = map_kafka_error(error(fatal=True, retriable=True, txn_requires_abort=True))
    assert isinstance(mapped, FatalError)


def test_an_error_that_requires_an_abort_is_told_apart_from_a_plain_retry() -> None:
    abort = map_kafka_error(error(txn_requires_abort=True, retriable=True))
    retry = map_kafka_error(error(retriable=True))
    assert isinstance(abort, AbortTransactionError)
    assert isinstance(retry, RetriableError)
    assert not isinstance(retry, AbortTransactionError)


@pytest.mark.parametrize("what", ["", "init_transactions"])
def test_an_error_no_retry_can_fix_is_fatal_and_says_what_failed(what: str) -> None:
    mapped = map_kafka_error(error(), what)
    assert isinstance(mapped, FatalError)
    assert str(mapped).startswith(what)
