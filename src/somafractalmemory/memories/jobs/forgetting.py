"""Decay and forgetting: archive what has faded and does not matter; restore on demand.

Retention is computed, not stored: `ranking.retention` of the time since a memory last
mattered (its event or its last recall), with the type's half-life stretched by importance
and by recalls (`strength`). Forgetting archives memories whose retention is below
`forget_threshold` and whose importance is below `forget_floor`: they leave the index (so
search no longer finds them) but stay in SQL, fetchable and restorable. Nothing is deleted
unless `archive_retention_days` is set.

Expired memories (`expires_at` passed) left searches when they expired; forgetting then
archives them, or erases them where their namespace's policy says `erase`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from somafractalmemory.conf import get_config
from somafractalmemory.errors import MemoryNotFound
from somafractalmemory.memories import indexing, remember, tenancy
from somafractalmemory.memories.jobs import runner
from somafractalmemory.memories.models import DEFAULT_TENANT, Memory, NamespacePolicy, VectorTask
from somafractalmemory.memories.recall import retention
from somafractalmemory.retrieval import ranking

CHUNK = 1000
SAMPLE = 20


@dataclass
class Forgetting:
    considered: int = 0
    archived: int = 0
    deleted: int = 0
    expired_archived: int = 0
    """Expired memories archived (their namespace's `on_expiry` is `archive`)."""
    expired_erased: int = 0
    """Expired memories erased (`on_expiry: erase`)."""
    dry_run: bool = False
    sample: list[dict[str, Any]] = field(default_factory=list)
    """Some of the archived memories: id and retention."""

    def as_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def archive_faded(
    *,
    tenant: str = DEFAULT_TENANT,
    namespace: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    report: runner.Progress = runner.quiet,
) -> Forgetting:
    """Archive faded, unimportant memories (and delete archived ones past retention)."""
    config = get_config()
    now = now or datetime.now(UTC)
    outcome = Forgetting(dry_run=dry_run)
    scope = Memory.objects.filter(tenant_id=tenant, archived_at__isnull=True)
    if namespace is not None:
        scope = scope.filter(namespace=namespace)
    candidates = scope.filter(importance__lt=config.forget_floor)
    total = candidates.count()
    faded: list[str] = []
    for n, memory in enumerate(candidates.order_by("id").iterator(chunk_size=CHUNK), 1):
        kept = retention(memory, now)
        if ranking.forgettable(
            kept, memory.importance, threshold=config.forget_threshold, floor=config.forget_floor
        ):
            faded.append(memory.id)
            if len(outcome.sample) < SAMPLE:
                outcome.sample.append({"id": memory.id, "retention": round(kept, 6)})
        if n % CHUNK == 0:
            report(n, total, "scoring")
    outcome.considered = total
    # Expired: archived, or erased (archived ones too) where the namespace's policy says so.
    expired: dict[str, list[tuple[str, bool]]] = {}
    ended = Memory.objects.filter(tenant_id=tenant, expires_at__lte=now)
    if namespace is not None:
        ended = ended.filter(namespace=namespace)
    for memory_id, name, archived in ended.values_list("id", "namespace", "archived_at"):
        expired.setdefault(name, []).append((memory_id, archived is not None))
    gone = {i for rows in expired.values() for i, _ in rows}
    faded = [i for i in faded if i not in gone]  # counted as expired
    outcome.archived = len(faded)
    for name, rows in sorted(expired.items()):
        if tenancy.policy(tenant, name).on_expiry == NamespacePolicy.ERASE:
            ids = [i for i, _ in rows]
            outcome.expired_erased += len(ids) if dry_run else _delete(tenant, ids)
        else:
            ids = [i for i, archived in rows if not archived]
            outcome.expired_archived += len(ids)
            if not dry_run:
                for start in range(0, len(ids), CHUNK):
                    archive(ids[start : start + CHUNK], tenant=tenant, now=now)
        report(0, 0, "expired")
    if not dry_run:
        for start in range(0, len(faded), CHUNK):
            archive(faded[start : start + CHUNK], tenant=tenant, now=now)
            report(start, len(faded), "archiving")
        outcome.deleted = _expire(tenant, namespace, now)
    report(total, total, "done")
    return outcome


def _expire(tenant: str, namespace: str | None, now: datetime) -> int:
    days = get_config().archive_retention_days
    if days <= 0:
        return 0
    old = Memory.objects.filter(tenant_id=tenant, archived_at__lt=now - timedelta(days=days))
    if namespace is not None:
        old = old.filter(namespace=namespace)
    return _delete(tenant, list(old.values_list("id", flat=True)))


def _delete(tenant: str, ids: Sequence[str]) -> int:
    deleted = 0
    for memory_id in ids:
        try:
            remember.delete(memory_id, tenant=tenant)
            deleted += 1
        except MemoryNotFound:
            pass  # deleted meanwhile
    return deleted


def archive(
    ids: Sequence[str], *, tenant: str = DEFAULT_TENANT, now: datetime | None = None
) -> int:
    """Take memories out of search (SQL first, then the index; the outbox covers failures)."""
    with transaction.atomic():
        changed = Memory.objects.filter(
            tenant_id=tenant, id__in=list(ids), archived_at__isnull=True
        ).update(archived_at=now or datetime.now(UTC))
        tasks = indexing.owe(ids, VectorTask.Action.DELETE)
    indexing.unindex(ids, tasks)
    return changed


def restore(memory_id: str, *, tenant: str = DEFAULT_TENANT) -> Memory:
    """Bring an archived memory back into search, as if just recalled (an expired one
    without its expiry)."""
    memory = remember.get(memory_id, tenant=tenant)
    if memory.archived_at is None:
        return memory
    with transaction.atomic():
        memory = remember.get(memory_id, tenant=tenant, lock=True)
        if memory.archived_at is None:
            return memory  # restored meanwhile
        memory.archived_at = None
        memory.last_accessed_at = datetime.now(UTC)
        if memory.expires_at is not None and memory.expires_at <= memory.last_accessed_at:
            memory.expires_at = None
        memory.save(update_fields=["archived_at", "last_accessed_at", "expires_at", "updated_at"])
        tasks = indexing.owe([memory.id])
    indexing.index_or_owe([memory], None, tasks)
    return memory


def start(
    *,
    tenant: str = DEFAULT_TENANT,
    namespace: str | None = None,
    dry_run: bool = False,
    wait: bool = False,
) -> Any:
    """Forgetting as a job: queued on the job thread, or run to the end with `wait`."""
    job = runner.create(tenant, "forget", {"namespace": namespace, "dry_run": dry_run})

    def work(progress: runner.Progress) -> dict[str, Any]:
        faded = archive_faded(tenant=tenant, namespace=namespace, dry_run=dry_run, report=progress)
        return faded.as_dict()

    return runner.run(job, work) if wait else runner.submit(job, work)
