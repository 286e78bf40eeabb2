"""argon2id hashing: correct passwords verify, others do not, old parameters get upgraded."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import argon2
import pytest

from auth_grpc.passwords import PasswordHasher, available_cpus
from tests.fixtures.auth import FAST_ARGON2, fast_hasher


async def test_a_hash_is_argon2id_and_verifies_only_the_right_password() -> None:
    hasher = fast_hasher()
    stored = await hasher.hash("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert "correct horse battery" not in stored
    assert await hasher.verify(stored, "correct horse battery")
    assert not await hasher.verify(stored, "correct horse battery!")
    assert not await hasher.verify(stored, "")


async def test_the_same_password_hashes_differently_each_time() -> None:
    hasher = fast_hasher()
    assert await hasher.hash("same password") != await hasher.hash("same password")


async def test_a_corrupt_stored_hash_never_verifies() -> None:
    hasher = fast_hasher()
    assert not await hasher.verify("not-a-hash", "whatever1")
    assert hasher.needs_rehash("not-a-hash")


async def test_a_hash_made_with_other_parameters_needs_a_rehash() -> None:
    old = fast_hasher()
    stronger = PasswordHasher.from_parameters(dataclasses.replace(FAST_ARGON2, time_cost=2))
    stored = await old.hash("correct horse")
    assert not old.needs_rehash(stored)
    assert stronger.needs_rehash(stored)
    assert await stronger.verify(stored, "correct horse")  # still verifies meanwhile


def test_the_default_hasher_uses_argon2id() -> None:
    assert PasswordHasher()._hasher.type is argon2.Type.ID


async def test_hashing_runs_off_the_event_loop_thread() -> None:
    seen: list[int] = []

    class Spy(argon2.PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            seen.append(threading.get_ident())
            return super().hash(password, salt=salt)

    hasher = PasswordHasher(Spy.from_parameters(FAST_ARGON2))
    await hasher.hash("some password")
    await hasher.verify_dummy("some password")
    assert seen
    assert threading.get_ident() not in seen


@pytest.mark.parametrize("password", ["short", "a much longer password ✓"])
async def test_a_dummy_verify_never_raises(password: str) -> None:
    await fast_hasher().verify_dummy(password)


def test_hashing_concurrency_follows_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container on a 512-core host must not run 512 hashes of 64 MiB at once."""
    monkeypatch.setattr(os, "cpu_count", lambda: 512)
    allowed = len(os.sched_getaffinity(0))
    assert PasswordHasher().max_concurrent <= allowed
    assert PasswordHasher(max_concurrent=3).max_concurrent == 3


def test_a_cgroup_cpu_quota_caps_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert available_cpus(affinity=8, cgroup_root=tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota
    assert available_cpus(affinity=8, cgroup_root=tmp_path) == 8
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one slot
    assert available_cpus(affinity=8, cgroup_root=tmp_path) == 1


def test_a_cgroup_v1_quota_caps_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(affinity=16, cgroup_root=tmp_path) == 2
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert available_cpus(affinity=16, cgroup_root=tmp_path) == 16
