"""Consistency tokens: what a write returns so a later search can wait until it shows.

A token names one written version: `{"c": collection, "i": document id, "v": version}`,
URL-safe base64, then an HMAC-SHA256 tag (truncated to 128 bits) under
`OUTBOX_API_CONSISTENCY_KEY`. Clients treat it as opaque; the tag makes it tamper-evident,
so nobody can make a search wait on a version they never wrote. The key is the API's own,
not the auth service's token secret, which the API does not hold in production.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson

PREFIX = "v1."
TAG_BYTES = 16
MAX_TOKEN_CHARS = 512


class InvalidConsistencyTokenError(ValueError):
    """Not a token this API issued (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class WrittenVersion:
    """One write: the document's version after it (a delete's tombstone version too)."""

    collection: str
    document_id: str
    version: int


class ConsistencyTokens:
    """Issue and read tokens under one key (the same on every API replica)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, written: WrittenVersion) -> str:
        payload = _b64(
            orjson.dumps({"c": written.collection, "i": written.document_id, "v": written.version})
        )
        return f"{PREFIX}{payload}.{_b64(self._tag(payload))}"

    def read(self, token: str) -> WrittenVersion:
        """The written version a token names; `InvalidConsistencyTokenError` otherwise."""
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            raise InvalidConsistencyTokenError("not a consistency token from a write")
        payload, _, tag = token.removeprefix(PREFIX).partition(".")
        try:
            valid = hmac.compare_digest(_unb64(tag), self._tag(payload))
            decoded = orjson.loads(_unb64(payload)) if valid else None
        except (binascii.Error, ValueError) as e:
            raise InvalidConsistencyTokenError("not a consistency token from a write") from e
        if not valid:
            raise InvalidConsistencyTokenError("the consistency token has been altered")
        if not (
            isinstance(decoded, dict)
            and isinstance(decoded.get("c"), str)
            and isinstance(decoded.get("i"), str)
            and type(decoded.get("v")) is int
        ):
            raise InvalidConsistencyTokenError("not a consistency token from a write")
        return WrittenVersion(decoded["c"], decoded["i"], decoded["v"])

    def _tag(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:TAG_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
