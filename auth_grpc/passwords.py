"""argon2id password hashing, off the event loop.

argon2 is deliberately slow and memory-hungry (64 MiB per hash with the default RFC 9106
low-memory profile), so every hash and verify runs in a worker thread, and a semaphore
keeps the number running at once to the number of CPUs: a burst of logins queues instead
of allocating gigabytes.
"""

from __future__ import annotations

import asyncio
import os

import argon2
from argon2.exceptions import InvalidHashError, VerificationError


class PasswordHasher:
    """Hash and verify passwords with argon2id; tells when a stored hash needs upgrading."""

    def __init__(
        self, hasher: argon2.PasswordHasher | None = None, *, max_concurrent: int | None = None
    ) -> None:
        self._hasher = hasher or argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory
        self._slots = asyncio.Semaphore(max_concurrent or os.cpu_count() or 1)
        self._dummy_hash: str | None = None

    @classmethod
    def from_parameters(cls, parameters: argon2.Parameters) -> PasswordHasher:
        """A hasher with explicit argon2 parameters (tests use a cheap profile)."""
        return cls(argon2.PasswordHasher.from_parameters(parameters))

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
