"""Operator jobs: the use cases that can run for minutes, run in the background of the API.

`POST /v1/ops/replay`, `/v1/ops/reconcile` and `/v1/ops/dlq/redrive` validate their input,
record a job and answer 202 at once; the use case runs in a task of the API process that
no request owns, so a client that disconnects (or times out) changes nothing. Its state,
progress and result live in the MongoDB collection `ops.jobs` (a name no REST collection
can have), so every API replica can answer `GET /v1/ops/jobs/{id}`.

Life of a job: `running` → `succeeded` (with the use case's result) or `failed` (with the
error) or `interrupted`. The process running it writes its progress and a heartbeat every
`HEARTBEAT_S`. When the API stops (SIGTERM, Ctrl-C, a rolling restart), its lifespan
cancels every running job and records it as `interrupted`; a job whose process died
without a word (kill -9, OOM) keeps `running` in the record, and readers show it as
`interrupted` once its heartbeat is older than `STALE_AFTER_S`. Nothing resumes by itself:
re-run it. That is always safe: replay and repair re-emit events with their original ids
and the indexer's external versions make repeats no-ops, and a redrive that was cut short
re-publishes at most what it had already sent, which the same rule absorbs.

Records expire `RETENTION_S` (7 days) after they were created (a TTL index).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from infra.errors import PipelineError, RetriableError
from infra.mongo import map_mongo_error
from operator_tools.progress_display import Progress

log = structlog.get_logger(__name__)

JOBS_COLLECTION = "ops.jobs"
HEARTBEAT_S = 1.0
STALE_AFTER_S = 15.0
RETENTION_S = 7 * 86400
# How long the API's shutdown waits for cancelled jobs to record themselves.
STOP_GRACE_S = 5.0
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
INTERRUPTED_ON_STOP = "the API stopped while the job ran; re-running it is safe"


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class JobKind(StrEnum):
    REPLAY = "replay"
    RECONCILE = "reconcile"
    REDRIVE = "dlq-redrive"


@dataclass
class JobProgress:
    """A `Progress` that remembers where the job is; the runner persists it."""

    phase: str | None = None
    total: int | None = None
    done: int = 0

    def start(self, description: str, total: int | None) -> None:
        self.phase = description
        self.total = total
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "total": self.total, "done": self.done}


@dataclass
class Job:
    """One job as stored in `ops.jobs`."""

    id: str
    kind: JobKind
    actor: str
    params: dict[str, Any]
    instance: str
    created_at: datetime
    state: JobState = JobState.RUNNING
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = field(default_factory=JobProgress)
    result: dict[str, Any] | None = None
    error: str | None = None

    def effective_state(self, now: datetime) -> JobState:
        """The stored state, except that a `running` job nobody heartbeats is interrupted."""
        if self.state is JobState.RUNNING:
            last = self.heartbeat_at or self.created_at
            if (now - last).total_seconds() > STALE_AFTER_S:
                return JobState.INTERRUPTED
        return self.state

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """The public view (`GET /v1/ops/jobs/{id}`)."""
        now = now or datetime.now(UTC)
        state = self.effective_state(now)
        error = self.error
        if state is JobState.INTERRUPTED and self.state is JobState.RUNNING:
            error = (
                f"the API process running it ({self.instance}) stopped without recording "
                f"an end (no heartbeat for {STALE_AFTER_S:.0f}s); re-running is safe"
            )
        return {
            "id": self.id,
            "kind": self.kind.value,
            "state": state.value,
            "actor": self.actor,
            "params": self.params,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
            "progress": self.progress.as_dict(),
            "result": self.result,
            "error": error,
        }

    def to_mongo(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "kind": self.kind.value,
            "actor": self.actor,
            "params": self.params,
            "instance": self.instance,
            "created_at": self.created_at,
            "state": self.state.value,
            "heartbeat_at": self.heartbeat_at,
            "finished_at": self.finished_at,
            "progress": self.progress.as_dict(),
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def from_mongo(cls, raw: Mapping[str, Any]) -> Job:
        progress = raw.get("progress") or {}
        return cls(
            id=str(raw["_id"]),
            kind=JobKind(raw["kind"]),
            actor=str(raw["actor"]),
            params=dict(raw.get("params") or {}),
            instance=str(raw.get("instance", "")),
            created_at=_aware(raw["created_at"]),
            state=JobState(raw["state"]),
            heartbeat_at=_aware_or_none(raw.get("heartbeat_at")),
            finished_at=_aware_or_none(raw.get("finished_at")),
            progress=JobProgress(
                phase=progress.get("phase"),
                total=progress.get("total"),
                done=int(progress.get("done", 0)),
            ),
            result=raw.get("result"),
            error=raw.get("error"),
        )


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _aware_or_none(t: datetime | None) -> datetime | None:
    return None if t is None else _aware(t)


class JobStore(Protocol):
    """Where jobs are recorded (MongoDB in the API; a dict in unit tests)."""

    async def insert(self, job: Job) -> None: ...

    async def save(self, job: Job) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def recent(self, limit: int) -> list[Job]: ...


class MongoJobStore:
    """Jobs in `ops.jobs`, one document each, expiring `RETENTION_S` after creation."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._jobs = collection

    async def ensure_indexes(self) -> None:
        """The TTL and listing index; looks before it creates (see infra.mongo)."""
        try:
            existing = {
                tuple(spec["key"].items()) async for spec in await self._jobs.list_indexes()
            }
            if (("created_at", 1),) not in existing:
                await self._jobs.create_index(
                    [("created_at", ASCENDING)], name="jobs_ttl", expireAfterSeconds=RETENTION_S
                )
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def insert(self, job: Job) -> None:
        try:
            await self._jobs.insert_one(job.to_mongo())
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def save(self, job: Job) -> None:
        raw = job.to_mongo()
        raw.pop("_id")
        try:
            await self._jobs.update_one({"_id": job.id}, {"$set": raw})
        except PyMongoError as e:
            raise map_mongo_error(e) from e

    async def get(self, job_id: str) -> Job | None:
        try:
            raw = await self._jobs.find_one({"_id": job_id})
        except PyMongoError as e:
            raise map_mongo_error(e) from e
        return None if raw is None else Job.from_mongo(raw)

    async def recent(self, limit: int) -> list[Job]:
        try:
            cursor = self._jobs.find({}).sort("created_at", DESCENDING).limit(limit)
            return [Job.from_mongo(raw) async for raw in cursor]
        except PyMongoError as e:
            raise map_mongo_error(e) from e


# The use case a job runs: gets the job's progress, returns its result (`as_dict()`).
Work = Callable[[Progress], Awaitable[dict[str, Any]]]


def instance_name() -> str:
    """Which API process runs a job (shown when it vanished without a word)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    """Starts jobs as tasks of this process, heartbeats them, records how they end."""

    def __init__(
        self,
        store: JobStore,
        *,
        instance: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._instance = instance or instance_name()
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def submit(
        self, kind: JobKind, work: Work, *, actor: str, params: Mapping[str, Any]
    ) -> Job:
        """Record the job as running and start it; returns at once."""
        if self._closed:
            raise RetriableError("the API is stopping; no new jobs")
        now = self._clock()
        job = Job(
            id=uuid.uuid4().hex,
            kind=kind,
            actor=actor,
            params=dict(params),
            instance=self._instance,
            created_at=now,
            heartbeat_at=now,
        )
        await self._store.insert(job)
        task = asyncio.create_task(self._run(job, work), name=f"job-{kind.value}-{job.id}")
        self._tasks[job.id] = task
        self._jobs[job.id] = job

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(job.id, None)
            self._jobs.pop(job.id, None)

        task.add_done_callback(forget)
        log.info("job_started", job_id=job.id, kind=kind.value, actor=actor)
        return job

    async def _run(self, job: Job, work: Work) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(job), name=f"job-heartbeat-{job.id}")
        try:
            job.result = await work(job.progress)
            job.state = JobState.SUCCEEDED
        except asyncio.CancelledError:
            job.state = JobState.INTERRUPTED
            job.error = INTERRUPTED_ON_STOP
            await self._finish(job, heartbeat)
            raise
        except PipelineError as e:
            job.state = JobState.FAILED
            job.error = str(e) or type(e).__name__
        except Exception as e:  # a job's end must be recorded whatever it was
            log.exception("job_crashed", job_id=job.id, kind=job.kind.value)
            job.state = JobState.FAILED
            job.error = f"{type(e).__name__}: {e}"
        await self._finish(job, heartbeat)

    async def _finish(self, job: Job, heartbeat: asyncio.Task[None]) -> None:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        job.finished_at = job.heartbeat_at = self._clock()
        try:
            await self._store.save(job)
        except PipelineError as e:
            # MongoDB is gone: readers will see the job as interrupted once it goes stale.
            log.error("job_end_not_recorded", job_id=job.id, state=job.state.value, error=str(e))  # noqa: TRY400 - the error is the message
        log.info(
            "job_finished",
            job_id=job.id,
            kind=job.kind.value,
            state=job.state.value,
            actor=job.actor,
            error=job.error,
        )

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            job.heartbeat_at = self._clock()
            try:
                await self._store.save(job)
            except PipelineError as e:
                log.warning("job_heartbeat_failed", job_id=job.id, error=str(e))

    async def get(self, job_id: str) -> Job | None:
        return await self._store.get(job_id)

    async def recent(self, limit: int = 50) -> list[Job]:
        return await self._store.recent(limit)

    async def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Cancel every running job; each is recorded as interrupted (within `grace_s`)."""
        self._closed = True
        running = [(self._jobs[job_id], task) for job_id, task in self._tasks.items()]
        for _, task in running:
            task.cancel()
        if not running:
            return
        _, pending = await asyncio.wait([task for _, task in running], timeout=grace_s)
        if pending:
            log.warning("jobs_still_stopping", jobs=len(pending))
        for job, _ in running:
            # A task cancelled before it ever ran, or one still stuck: recorded here.
            if job.state is JobState.RUNNING:
                job.state = JobState.INTERRUPTED
                job.error = INTERRUPTED_ON_STOP
                job.finished_at = job.heartbeat_at = self._clock()
                try:
                    await self._store.save(job)
                except PipelineError as e:
                    log.error("job_end_not_recorded", job_id=job.id, error=str(e))  # noqa: TRY400 - the error is the message
