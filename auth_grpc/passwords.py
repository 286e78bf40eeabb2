"""argon2id password hashing, off the event loop.

argon2 is deliberately slow and memory-hungry (64 MiB per hash with the default RFC 9106
low-memory profile), so every hash and verify runs in a worker thread, and a semaphore
keeps the number running at once to the CPUs this process may use (`available_cpus`: its
CPU affinity and its cgroup's quota, not the host's core count): a burst of logins queues
instead of allocating gigabytes in a memory-limited container.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(*, affinity: int | None = None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    cpus = affinity if affinity is not None else len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    """The cgroup's CPU quota in CPUs, or None when there is none (or no cgroup to read)."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU controller here: try v1
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


class PasswordHasher:
    """Hash and verify passwords with argon2id; tells when a stored hash needs upgrading."""

    def __init__(
        self, hasher: argon2.PasswordHasher | None = None, *, max_concurrent: int | None = None
    ) -> None:
        self._hasher = hasher or argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory
        self.max_concurrent = max_concurrent or available_cpus()
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self._dummy_hash: str | None = None

    @classmethod
    def from_parameters(
        cls, parameters: argon2.Parameters, *, max_concurrent: int | None = None
    ) -> PasswordHasher:
        """A hasher with explicit argon2 parameters (tests use a cheap profile)."""
        return cls(argon2.PasswordHasher.from_parameters(parameters), max_concurrent=max_concurrent)

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash (parameters and salt included)."""
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; False on a mismatch or an unreadable hash."""
        async with self._slots:
            return await asyncio.to_thread(self._verify, password_hash, password)

    async def prepare(self) -> None:
        """Make the throwaway hash now, so the first unknown-user login costs no extra hash."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(os.urandom(16).hex())

    async def verify_dummy(self, password: str) -> None:
        """Do the work of a real verify against a throwaway hash (unknown user at login)."""
        await self.prepare()
        assert self._dummy_hash is not None
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):  # a mismatch is a VerificationError
            return False
