"""Background jobs (consolidation, forgetting, erasure) and SQL leases that keep them single.

A job is a row: queued -> running -> succeeded | failed, with progress and a heartbeat. Jobs
run on one thread per process; `run` executes inline instead (`"wait": true`). A job whose
process died stops beating; reading it then reports it failed (`job_interrupted`), and since
the work is idempotent, running it again finishes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from django.db import IntegrityError, connections, transaction

from somafractalmemory.errors import JobNotFound, SFMError
from somafractalmemory.memories.identity import new_id
from somafractalmemory.memories.models import Job, Lease
from somafractalmemory.memories.tenancy import ensure_tenant

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(seconds=120)
HEARTBEAT_SECONDS = 1.0
HOLDER = f"{socket.gethostname()}:{os.getpid()}"
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfm-job")


class Progress(Protocol):
    """How long work reports as it goes: `progress(done, total, stage)`. Jobs, the CLI and
    the benchmarks each pass their own."""

    def __call__(self, done: int, total: int, stage: str = "") -> None: ...


def quiet(done: int, total: int, stage: str = "") -> None:
    """A `Progress` that reports nothing."""


class JobProgress:
    """A job's `Progress`: written to its row at most once a second (and at the end), which
    is also the job's heartbeat."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._last = 0.0

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        now = time.monotonic()
        if now - self._last < HEARTBEAT_SECONDS and done < total:
            return
        self._last = now
        self.job.progress = {"done": done, "total": total, "stage": stage}
        self.job.heartbeat_at = datetime.now(UTC)
        self.job.save(update_fields=["progress", "heartbeat_at"])


Work = Callable[[Progress], dict[str, Any]]


def create(tenant: str, kind: str, params: dict[str, Any]) -> Job:
    ensure_tenant(tenant)
    return Job.objects.create(id=new_id("job"), tenant_id=tenant, kind=kind, params=params)


def run(job: Job, work: Work, *, reraise: bool = False) -> Job:
    """Run the job here and now; returns it finished (succeeded or failed). With `reraise`
    a failure is recorded and raised again."""
    job.status, job.started_at = Job.Status.RUNNING, datetime.now(UTC)
    job.heartbeat_at = job.started_at
    job.save(update_fields=["status", "started_at", "heartbeat_at"])
    try:
        job.result = work(JobProgress(job))
        job.status = Job.Status.SUCCEEDED
    except SFMError as exc:
        job.status, job.error = Job.Status.FAILED, exc.to_dict()["error"]
        if reraise:
            _finish(job)
            raise
    except Exception as exc:  # a job reports its failure; the log has the trace
        log.exception("job %s (%s) failed", job.id, job.kind)
        job.status = Job.Status.FAILED
        job.error = {"code": "internal_error", "message": str(exc)[:500], "details": None}
        if reraise:
            _finish(job)
            raise
    _finish(job)
    return job


def _finish(job: Job) -> None:
    job.finished_at = datetime.now(UTC)
    job.save(update_fields=["status", "result", "error", "finished_at"])


def submit(job: Job, work: Work) -> Job:
    """Queue the job on this process's job thread; returns at once."""

    def execute() -> None:
        try:
            run(job, work)
        finally:
            # Jobs are rare: close this thread's connections rather than keep them idle.
            connections.close_all()

    _POOL.submit(execute)
    return job


def get(job_id: str, *, tenant: str) -> Job:
    job = Job.objects.filter(tenant_id=tenant, id=job_id).first()
    if job is None:
        raise JobNotFound(f"no job {job_id!r}", details={"id": job_id})
    beat = job.heartbeat_at or job.created_at
    if job.status in (Job.Status.QUEUED, Job.Status.RUNNING) and (
        datetime.now(UTC) - beat > STALE_AFTER
    ):
        job.status, job.finished_at = Job.Status.FAILED, datetime.now(UTC)
        job.error = {
            "code": "job_interrupted",
            "message": "the process running this job stopped; start it again (it is idempotent)",
            "details": None,
        }
        job.save(update_fields=["status", "error", "finished_at"])
    return job


def holder_dead(holder: str) -> bool:
    """Whether `holder` (host:pid) is a process of this host that no longer runs (killed):
    what it held can be taken over at once instead of when it expires."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    try:  # a killed process nobody has reaped yet is a zombie: dead too
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def holder_alive(holder: str) -> bool:
    """Whether `holder` (host:pid) is a running process of this host: its work is going on,
    however long since it last reported."""
    host, _, pid = holder.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not holder_dead(holder)


@contextmanager
def lease(name: str, seconds: float) -> Iterator[bool]:
    """Hold the named lease while the block runs, if nobody else holds it: yields whether
    it was acquired. Expired leases, and those of a dead process of this host, are taken
    over."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=seconds)
    try:
        with transaction.atomic():
            Lease.objects.create(name=name, holder=HOLDER, expires_at=expires)
        acquired = True
    except IntegrityError:
        held = Lease.objects.filter(name=name).values_list("holder", flat=True).first()
        stale = Lease.objects.filter(name=name, expires_at__lt=now)
        if held is not None and holder_dead(held):
            stale = Lease.objects.filter(name=name, holder=held)
        acquired = stale.update(holder=HOLDER, expires_at=expires) == 1
    try:
        yield acquired
    finally:
        if acquired:
            Lease.objects.filter(name=name, holder=HOLDER).delete()
