"""The collection-name rule and the reserved collections, shared by every stage."""

from __future__ import annotations

import pytest

from infra.naming import is_collection_name, is_document_collection, reserved_collections
from infra.settings import MongoSettings


@pytest.mark.parametrize("name", ["books", "a", "b-2_x", "a" * 64])
def test_a_lowercase_name_of_up_to_64_characters_is_a_collection_name(name: str) -> None:
    assert is_collection_name(name)


@pytest.mark.parametrize(
    "name", ["", "Books", "1books", "-b", "system.users", "a.b", "b\n", "é", "a" * 65]
)
def test_other_names_are_refused(name: str) -> None:
    assert not is_collection_name(name)


def test_the_outbox_users_and_service_collections_are_reserved_whatever_they_are_called() -> None:
    mongo = MongoSettings(outbox_collection="events", users_collection="people")
    assert reserved_collections(mongo) >= {"events", "people", "relay_leases", "revoked_tokens"}
    for name in reserved_collections(mongo):
        assert not is_document_collection(name, mongo)
    assert is_document_collection("outbox", mongo)  # not reserved under this configuration
