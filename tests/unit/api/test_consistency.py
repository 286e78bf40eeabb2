"""Consistency tokens round-trip, and an altered or foreign token is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.consistency import ConsistencyTokens, InvalidConsistencyTokenError, WrittenVersion

TOKENS = ConsistencyTokens(b"unit-test-key")


@given(
    st.from_regex(r"[a-z][a-z0-9_-]{0,63}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}", fullmatch=True),
    st.integers(min_value=1, max_value=2**63 - 1),
)
def test_a_token_names_the_written_version(collection: str, doc_id: str, version: int) -> None:
    written = WrittenVersion(collection, doc_id, version)
    token = TOKENS.issue(written)
    assert TOKENS.read(token) == written
    assert token.isascii()


def test_a_token_with_a_raised_version_is_refused() -> None:
    token = TOKENS.issue(WrittenVersion("books", "dune", 1))
    forged = TOKENS.issue(WrittenVersion("books", "dune", 10**9))
    payload = forged.split(".")[1]
    tag = token.split(".")[2]
    with pytest.raises(InvalidConsistencyTokenError, match="altered"):
        TOKENS.read(f"v1.{payload}.{tag}")


def test_a_token_under_another_key_is_refused() -> None:
    token = ConsistencyTokens(b"other").issue(WrittenVersion("books", "dune", 1))
    with pytest.raises(InvalidConsistencyTokenError):
        TOKENS.read(token)


@given(st.text(max_size=600))
def test_arbitrary_text_is_never_a_token(text: str) -> None:
    with pytest.raises(InvalidConsistencyTokenError):
        TOKENS.read(text)
