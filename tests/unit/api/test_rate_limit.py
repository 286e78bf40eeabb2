"""Rate limits per client: token buckets, and which address a request counts against."""

from __future__ import annotations

import pytest

from api.rate_limit import TokenBuckets, client_address, parse_networks, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_asks_to_wait_until_it_refills() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    wait = buckets.take("a")
    assert wait == pytest.approx(0.5)
    assert buckets.take("b") is None, "another client has its own bucket"
    clock.now += 0.5
    assert buckets.take("a") is None
    assert retry_after(0.01) == "1"
    assert retry_after(2.2) == "3"


def test_wait_s_looks_without_taking() -> None:
    buckets = TokenBuckets(rate_per_s=1, burst=1, clock=Clock())
    assert buckets.wait_s("a") is None
    assert buckets.wait_s("a") is None
    assert buckets.take("a") is None
    assert buckets.wait_s("a") == pytest.approx(1.0)


def test_the_number_of_clients_remembered_is_bounded() -> None:
    buckets = TokenBuckets(rate_per_s=1, burst=1, max_keys=10, clock=Clock())
    for i in range(100):
        buckets.take(f"client-{i}")
    assert len(buckets._buckets) == 10


def _scope(peer: str, forwarded: str | None = None) -> dict[str, object]:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return {"client": (peer, 5555), "headers": headers}


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_address(_scope("203.0.113.9", "198.51.100.1"), ()) == "203.0.113.9"
    trusted = parse_networks(["10.0.0.0/8"])
    assert client_address(_scope("203.0.113.9", "198.51.100.1"), trusted) == "203.0.113.9"


def test_behind_trusted_proxies_the_first_untrusted_address_from_the_right_counts() -> None:
    trusted = parse_networks(["10.0.0.0/8", "192.0.2.7"])
    scope = _scope("10.1.1.1", "6.6.6.6, 198.51.100.1, 192.0.2.7")
    # 6.6.6.6 was written by the client itself; 198.51.100.1 is what our proxy saw.
    assert client_address(scope, trusted) == "198.51.100.1"
    assert client_address(_scope("10.1.1.1"), trusted) == "10.1.1.1"
    assert client_address(_scope("10.1.1.1", "not-an-ip"), trusted) == "10.1.1.1"
