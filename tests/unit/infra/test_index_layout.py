"""The Elasticsearch layout contract: index naming, mapping, tombstones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.envelope import EventType
from infra.index_layout import (
    LIVE_FILTER,
    index_mapping,
    index_name,
    index_version,
    is_tombstone,
    next_index_name,
    source_for,
)
from infra.naming import COLLECTION_RE
from infra.settings import ElasticSettings
from tests.fixtures.indexer import make_record

collections = st.from_regex(COLLECTION_RE, fullmatch=True)


@given(collections, collections, st.integers(1, 10**6))
def test_no_collection_alias_is_ever_another_collections_concrete_index(
    a: str, b: str, version: int
) -> None:
    """`books-v1` must not take the name of `books`'s index: aliases and indices never meet."""
    es = ElasticSettings(index_prefix="outbox-")
    concrete = index_name(es.alias_for(b), version)
    assert es.alias_for(a) != concrete
    assert index_version(es.alias_for(a), concrete) == (version if a == b else None)


def test_next_index_name_counts_past_every_existing_version_of_both_schemes() -> None:
    """The new index is one above the highest seen (old `-vN` indices included), never a reuse."""
    assert next_index_name("ns-books", []) == "ns-books.v1"
    assert next_index_name("ns-books", ["ns-books-v1"]) == "ns-books.v2"
    assert next_index_name("ns-books", ["ns-books.v3", "ns-books-v10"]) == "ns-books.v11"
    # Another collection's indices (`books-v1` has alias ns-books-v1) never count.
    assert next_index_name("ns-books", ["ns-books-v1.v7", "ns-booksx.v9"]) == "ns-books.v1"


def test_a_delete_is_a_tombstone_that_search_filters_out() -> None:
    tombstone = source_for(make_record("books", "b1", 3, EventType.DELETED))
    live = source_for(make_record("books", "b1", 2))
    assert is_tombstone(tombstone)
    assert not is_tombstone(live)
    ((field, wanted),) = LIVE_FILTER["term"].items()
    assert tombstone[field] != wanted
    assert live[field] == wanted


def test_mapping_override_describes_the_document_fields() -> None:
    """`settings.es.mappings[c]` maps document fields; the envelope fields stay fixed."""
    mapping = index_mapping({"properties": {"price": {"type": "double"}}, "dynamic": "strict"})
    document = mapping["properties"]["document"]
    assert document["properties"] == {"price": {"type": "double"}}
    assert document["dynamic"] == "strict"
    assert mapping["properties"]["version"] == {"type": "long"}
    assert mapping["properties"]["id"] == {"type": "keyword"}
    assert mapping["date_detection"] is False
    with pytest.raises(ValueError, match="unsupported"):
        index_mapping({"settings": {}})


def test_default_mapping_indexes_document_strings_as_text_with_keyword() -> None:
    mapping = index_mapping()
    (template,) = mapping["dynamic_templates"]
    rule = template["document_strings"]
    assert rule["path_match"] == "document.*"
    assert rule["mapping"]["fields"]["keyword"]["type"] == "keyword"
