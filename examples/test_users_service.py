"""A user's integration test, written with the `outbox_pipeline.testing` plugin.

No conftest: installing outbox-pipeline registers the plugin. Run it with
`pytest examples/test_users_service.py`; the project's suite runs it too
(tests/integration/outbox_pipeline/test_plugin.py).
"""

from book_catalog import BookCatalog


def test_a_new_book_is_found_by_its_title(outbox_client, wait_searchable):
    catalog = BookCatalog(outbox_client)
    token = catalog.add("9780441013593", title="Dune", author="Frank Herbert")
    wait_searchable(token, "books")
    assert catalog.search("dune") == ["Dune"]


def test_a_removed_book_is_no_longer_found(outbox_client, wait_searchable):
    catalog = BookCatalog(outbox_client)
    wait_searchable(catalog.add("9780553283686", title="Hyperion", author="Dan Simmons"), "books")
    wait_searchable(catalog.remove("9780553283686"), "books")
    assert catalog.search("hyperion") == []
