"""A user's own service: a book catalog that stores books through outbox-pipeline's REST API.

It is what `test_users_service.py` tests with the `outbox_pipeline.testing` plugin: the
catalog talks HTTP to the pipeline's API and hands the consistency token of each write
back to its caller, so a caller (or a test) can wait until the write is searchable.
"""

from __future__ import annotations

import httpx

COLLECTION = "books"


class BookCatalog:
    """Books by ISBN, searchable by title and author."""

    def __init__(self, api: httpx.Client) -> None:
        self._api = api

    def add(self, isbn: str, *, title: str, author: str) -> str:
        """Store a book; returns the write's consistency token."""
        r = self._api.put(
            f"/v1/collections/{COLLECTION}/documents/{isbn}",
            json={"title": title, "author": author},
        )
        r.raise_for_status()
        return r.headers["Outbox-Token"]

    def remove(self, isbn: str) -> str:
        r = self._api.delete(f"/v1/collections/{COLLECTION}/documents/{isbn}")
        r.raise_for_status()
        return r.headers["Outbox-Token"]

    def search(self, text: str) -> list[str]:
        """Titles of the books matching `text`, best match first."""
        r = self._api.get(f"/v1/collections/{COLLECTION}/search", params={"q": text})
        r.raise_for_status()
        return [hit["document"]["title"] for hit in r.json()["hits"]]
