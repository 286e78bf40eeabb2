"""Operator jobs: how a job's life is recorded, without servers (an in-memory store)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.errors import RetriableError
from operator_tools.jobs import STALE_AFTER_S, Job, JobKind, JobRunner, JobState
from operator_tools.progress_display import Progress


class MemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.saves = 0

    async def insert(self, job: Job) -> None:
        self.jobs[job.id] = copy.deepcopy(job.to_mongo())

    async def save(self, job: Job) -> None:
        self.saves += 1
        self.jobs[job.id] = copy.deepcopy(job.to_mongo())

    async def get(self, job_id: str) -> Job | None:
        raw = self.jobs.get(job_id)
        return None if raw is None else Job.from_mongo(raw)

    async def recent(self, limit: int) -> list[Job]:
        ordered = sorted(self.jobs.values(), key=lambda r: r["created_at"], reverse=True)
        return [Job.from_mongo(r) for r in ordered[:limit]]


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _state(store: MemoryJobStore, job_id: str) -> JobState:
    job = await store.get(job_id)
    assert job is not None
    return job.state


async def test_a_job_that_ends_well_records_its_result() -> None:
    store = MemoryJobStore()
    runner = JobRunner(store, heartbeat_s=0.01)

    async def work(progress: Progress) -> dict[str, Any]:
        progress.start("counting", 3)
        progress.advance(3)
        return {"matched": 3}

    job = await runner.submit(JobKind.REPLAY, work, actor="api:root", params={"all": True})
    assert job.as_dict()["state"] == "running"

    async def done() -> bool:
        return await _state(store, job.id) is JobState.SUCCEEDED

    await _until(done, "succeeded")
    stored = await store.get(job.id)
    assert stored is not None
    view = stored.as_dict()
    assert view["result"] == {"matched": 3}
    assert view["progress"] == {"phase": "counting", "total": 3, "done": 3}
    assert view["actor"] == "api:root"
    assert view["params"] == {"all": True}
    assert view["finished_at"] is not None
    assert runner.running == 0


async def test_a_failing_job_records_the_error_and_the_runner_carries_on() -> None:
    store = MemoryJobStore()
    runner = JobRunner(store, heartbeat_s=0.01)

    async def broken(progress: Progress) -> dict[str, Any]:
        raise RetriableError("Kafka at 127.0.0.1:1 is unreachable")

    async def buggy(progress: Progress) -> dict[str, Any]:
        raise KeyError("surprise")

    first = await runner.submit(JobKind.RECONCILE, broken, actor="api:a", params={})
    second = await runner.submit(JobKind.REDRIVE, buggy, actor="api:a", params={})

    async def both_failed() -> bool:
        return all([await _state(store, j.id) is JobState.FAILED for j in (first, second)])

    await _until(both_failed, "both failed")
    one, two = await store.get(first.id), await store.get(second.id)
    assert one is not None
    assert two is not None
    assert one.error == "Kafka at 127.0.0.1:1 is unreachable"
    assert two.error is not None
    assert "KeyError" in two.error


async def test_progress_and_heartbeat_are_recorded_while_the_job_runs() -> None:
    store = MemoryJobStore()
    runner = JobRunner(store, heartbeat_s=0.01)
    release = asyncio.Event()

    async def slow(progress: Progress) -> dict[str, Any]:
        progress.start("replaying", 10)
        progress.advance(4)
        await release.wait()
        return {}

    job = await runner.submit(JobKind.REPLAY, slow, actor="api:a", params={})

    async def progressed() -> bool:
        stored = await store.get(job.id)
        return stored is not None and stored.progress.done == 4

    await _until(progressed, "progress recorded")
    stored = await store.get(job.id)
    assert stored is not None
    assert stored.state is JobState.RUNNING
    release.set()
    await runner.close()


async def test_stopping_the_runner_records_running_jobs_as_interrupted() -> None:
    """The API's shutdown cancels its jobs; each says so in its record."""
    store = MemoryJobStore()
    runner = JobRunner(store, heartbeat_s=0.01)

    async def forever(progress: Progress) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    job = await runner.submit(JobKind.REPLAY, forever, actor="api:a", params={})
    await asyncio.sleep(0.02)
    await runner.close()
    stored = await store.get(job.id)
    assert stored is not None
    assert stored.state is JobState.INTERRUPTED
    assert stored.error is not None
    assert "re-running it is safe" in stored.error


async def test_a_job_whose_process_vanished_reads_as_interrupted() -> None:
    """No heartbeat for STALE_AFTER_S (kill -9 of the API): shown interrupted, not running."""
    created = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(
        id="a" * 32,
        kind=JobKind.REPLAY,
        actor="api:a",
        params={},
        instance="host:1",
        created_at=created,
        heartbeat_at=created,
    )
    fresh = created + timedelta(seconds=STALE_AFTER_S - 1)
    stale = created + timedelta(seconds=STALE_AFTER_S + 1)
    assert job.as_dict(fresh)["state"] == "running"
    view = job.as_dict(stale)
    assert view["state"] == "interrupted"
    assert "host:1" in view["error"]


async def test_no_job_starts_once_the_runner_is_closing() -> None:
    store = MemoryJobStore()
    runner = JobRunner(store)
    await runner.close()

    async def work(progress: Progress) -> dict[str, Any]:
        return {}

    with pytest.raises(RetriableError, match="stopping"):
        await runner.submit(JobKind.REPLAY, work, actor="api:a", params={})
    assert store.jobs == {}


async def test_a_job_stopped_before_its_task_ever_ran_is_recorded_interrupted() -> None:
    """The API can stop right after answering 202: the job must not stay `running`."""
    store = MemoryJobStore()
    runner = JobRunner(store, heartbeat_s=0.01)

    async def work(progress: Progress) -> dict[str, Any]:
        return {}

    job = await runner.submit(JobKind.REPLAY, work, actor="api:a", params={})
    await runner.close()  # no await in between: the task never started
    assert await _state(store, job.id) is JobState.INTERRUPTED
