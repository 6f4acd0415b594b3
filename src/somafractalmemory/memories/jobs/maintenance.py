"""Keeping the vector index true to SQL (`reindex`, `doctor`), the outbox worker, and the
scheduled jobs.

The index holds every memory that is not archived; archived memories are out of it on
purpose (forgetting), so for `doctor` an archived memory in the index is orphaned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import close_old_connections
from django.db.models import QuerySet

from somafractalmemory import backends
from somafractalmemory.conf import get_config
from somafractalmemory.errors import ConsolidationBusy
from somafractalmemory.memories import indexing, tenancy
from somafractalmemory.memories.indexing import drain_outbox, write_vectors
from somafractalmemory.memories.jobs import consolidation, forgetting
from somafractalmemory.memories.jobs.runner import Progress, lease, quiet
from somafractalmemory.memories.models import EPISODE_ORDER, Memory, VectorTask
from somafractalmemory.memories.recall import flush_reinforcements

log = logging.getLogger(__name__)

CHUNK = 1000


def _indexed() -> QuerySet[Memory]:
    """The memories the index should hold: all but the archived."""
    return Memory.objects.filter(archived_at__isnull=True)


def _chunks(ids: list[str] | None = None) -> Iterator[list[Memory]]:
    """Every memory (or those of `ids`), a chunk at a time, by keyset paging on id."""
    query = _indexed().order_by("id")
    if ids is not None:
        for start in range(0, len(ids), CHUNK):
            yield list(query.filter(id__in=ids[start : start + CHUNK]))
        return
    last = ""
    while chunk := list(query.filter(id__gt=last)[:CHUNK]):
        yield chunk
        last = chunk[-1].id


@dataclass
class ReindexReport:
    indexed: int = 0
    removed: int = 0


def reindex(
    *, drop: bool = False, reembed: bool = False, progress: Progress = quiet
) -> ReindexReport:
    """Re-embed every memory into the current model's collection, then remove orphans.

    Without `drop` the collection keeps answering while it is rebuilt; with it, the rebuild
    starts from an empty collection (after a model change the collection is new anyway).
    A configured model other than the data's own needs `reembed`: the data takes the new
    model once every memory is in its collection (the old model's stays, unread, until
    removed by hand; an interrupted re-embed leaves the old model in force).
    """
    index = backends.vector_index()
    if not reembed:
        indexing.check_model()
    if drop:
        index.reset()
    report = ReindexReport()
    tasks_before = VectorTask.objects.order_by("-id").values_list("id", flat=True).first() or 0
    # In each namespace's episode order, so that an episode's neighbours (its context) are
    # mostly in its own chunk or the one written before it: in id order (random) each chunk
    # embedded its memories' neighbours again, three times the encoder's work.
    order = ("tenant_id", "namespace", *EPISODE_ORDER)
    ids = list(_indexed().order_by(*order).values_list("id", flat=True))
    total = len(ids)
    for chunk in _chunks(ids):
        write_vectors(chunk)
        report.indexed += len(chunk)
        progress(report.indexed, total)
    known = set(_indexed().values_list("id", flat=True))
    orphans = [mid for mid, _ in index.entries() if mid not in known]
    index.delete(orphans)
    report.removed = len(orphans)
    # Tasks owed before the rebuild are settled by it.
    VectorTask.objects.filter(id__lte=tasks_before).delete()
    indexing.adopt_model()
    return report


@dataclass
class Drift:
    missing: list[str] = field(default_factory=list)
    """In SQL, not in the index."""
    orphaned: list[str] = field(default_factory=list)
    """In the index, not in SQL."""
    stale: list[str] = field(default_factory=list)
    """In both, but the index holds an older embedding."""
    dead: dict[str, str] = field(default_factory=dict)
    """Dead-lettered vector writes: memory id -> the last error."""
    failed: dict[str, str] = field(default_factory=dict)
    """With `repair`: memories whose index row could still not be written, and why."""

    @property
    def clean(self) -> bool:
        return not (self.missing or self.orphaned or self.stale or self.dead or self.failed)


def doctor(*, repair: bool = False, progress: Progress = quiet) -> Drift:
    """Compare SQL and the index; with `repair`, make the index match SQL."""
    index = backends.vector_index()
    indexed = dict(index.entries())
    drift = Drift()
    for memory_id, embedding_id in _indexed().values_list("id", "embedding_id").iterator():
        held = indexed.pop(memory_id, None)
        if held is None:
            drift.missing.append(memory_id)
        elif held != embedding_id:
            drift.stale.append(memory_id)
    drift.orphaned = sorted(indexed)
    dead = indexing.dead_letters()
    drift.dead = {t.memory_id: t.last_error for t in dead}
    if repair:
        todo = drift.missing + drift.stale
        done = 0
        for chunk in _chunks(todo):
            drift.failed.update(_write_each(chunk))
            done += len(chunk)
            progress(done, len(todo))
        index.delete(drift.orphaned)
        if dead:  # tried again now; what still fails is reported, and dead-lettered again
            indexing.revive(dead)
            drift.failed.update(_write_each(list(_indexed().filter(id__in=list(drift.dead)))))
            paid = [t for t in dead if t.memory_id not in drift.failed]
            indexing.pay(paid)
            VectorTask.objects.filter(id__in=[t.id for t in dead if t not in paid]).update(
                dead_at=datetime.now(UTC)
            )
            drift.dead = {i: e for i, e in drift.dead.items() if i in drift.failed}
    return drift


def _write_each(memories: list[Memory]) -> dict[str, str]:
    """Write the memories' index rows, one by one where the whole chunk fails: returns the
    ones that still fail, with why (one bad row must not keep the others out)."""
    try:
        write_vectors(memories)
        return {}
    except Exception:
        failed = {}
        for memory in memories:
            try:
                write_vectors([memory])
            except Exception as exc:
                failed[memory.id] = str(exc)[:500]
        return failed


# -- the outbox worker and the scheduled jobs ---------------------------------------------


OUTBOX_LEASE = "outbox"
"""The lease a process holds while it drains the outbox: of all the workers sharing a
database, one pays owed writes at a time (two would embed and write the same rows, and a
slow one could write a vector older than the other's)."""


def run_outbox_worker(stop: threading.Event, *, interval: float = 1.0) -> None:
    """Drain the outbox (and write this process's noted recalls) until `stop` is set;
    sleeps `interval` when there is nothing due, or when another process is draining.
    Tasks left by a previous process are due at once."""
    started = datetime.now(UTC)
    while not stop.is_set():
        try:
            flush_reinforcements()
            paid = 0
            with lease(OUTBOX_LEASE, 600) as mine:
                if mine:
                    paid = drain_outbox(owed_before=started)
        except Exception as exc:  # the worker must outlive any one failure
            log.warning("outbox worker: %s", exc)
            paid = 0
        finally:
            close_old_connections()
        if not paid:
            stop.wait(interval)


def consolidate_due() -> int:
    """Consolidate every namespace that has episodes without a parent; returns how many."""
    done = 0
    for tenant, namespace in consolidation.namespaces_to_consolidate():
        try:
            consolidation.consolidate(namespace, tenant=tenant)
            done += 1
        except ConsolidationBusy:
            continue  # another process is on it
    return done


def forget_due() -> int:
    """Run forgetting for every tenant; returns how many memories it archived."""
    return sum(forgetting.archive_faded(tenant=t.id).archived for t in tenancy.list_tenants())


def run_schedules(stop: threading.Event) -> None:
    """Consolidation and forgetting every `consolidate_every_seconds` /
    `forget_every_seconds` (0: never) until `stop` is set."""
    config = get_config()
    plan = [
        (every, job)
        for every, job in (
            (config.consolidate_every_seconds, consolidate_due),
            (config.forget_every_seconds, forget_due),
        )
        if every > 0
    ]
    due = [time.monotonic() + every for every, _ in plan]
    while plan and not stop.wait(1.0):
        for n, (every, job) in enumerate(plan):
            if time.monotonic() < due[n]:
                continue
            try:
                job()
            except Exception as exc:  # the schedule must outlive any one failure
                log.warning("scheduled %s failed: %s", job.__name__, exc)
            finally:
                close_old_connections()
            due[n] = time.monotonic() + every
