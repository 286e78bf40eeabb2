"""Per-client rate limits: token buckets keyed by the client's address, and how to find it.

In memory, per API replica (a limit of N per client is N per replica); bounded to
`max_keys` clients, least recently seen dropped first. `X-Forwarded-For` is believed only
when the connection comes from a configured proxy, and then only up to the first address
that is not one of ours, so a client cannot pick its own key.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from starlette.types import Scope

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBuckets:
    """`rate_per_s` tokens per second per key, holding at most `burst`."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def wait_s(self, key: str) -> float | None:
        """None if `key` has a token now, else the seconds until it has one (nothing taken)."""
        tokens = self._refilled(key)
        return None if tokens >= 1 else (1 - tokens) / self._rate

    def take(self, key: str) -> float | None:
        """Take a token: None if there was one, else the seconds until there is one."""
        wait = self.wait_s(key)
        if wait is None:
            tokens, at = self._buckets[key]
            self._buckets[key] = (tokens - 1, at)
        return wait

    def _refilled(self, key: str) -> float:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return tokens


def retry_after(wait_s: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


def parse_networks(entries: Iterable[str]) -> tuple[IpNetwork, ...]:
    """`OUTBOX_API_TRUSTED_PROXIES` entries (addresses or CIDR networks) as networks."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def client_address(scope: Scope, trusted_proxies: tuple[IpNetwork, ...]) -> str:
    """The client's address: the peer, or behind trusted proxies the forwarded one."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
    # Right to left: each trusted proxy appended the address it saw.
    for address in reversed([a for a in forwarded if a]):
        if not _trusted(address, trusted_proxies):
            return address if _is_ip(address) else peer
    return peer


def _trusted(address: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
