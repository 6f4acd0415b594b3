"""Erasure on demand: a whole namespace, or every memory a filter matches, in one call.

What goes, in this order (each step is safe to run again):
1. The request becomes a `purge` job row (filter, namespace, holder) before anything goes.
2. The matching memories are chosen: metadata is sealed in SQL, so filters are checked on
   the decrypted rows (archived memories included).
3. Chunk by chunk, one transaction deletes the rows with their links in both directions,
   writes outbox tasks that delete their vectors, and records in the job the parents that
   summarized them. After the commit the vectors are deleted (or the outbox pays them: a
   vector without its row is never a search hit, since the row decides).
4. The episodes next to erased ones get their context (vector and tokens, which held the
   erased text) rewritten; recorded parents are re-summarized from the children they have
   left, or removed when none is left, up the hierarchy.
5. The tenant's cached query vectors are dropped, and storage is scrubbed: Milvus Lite's
   file is vacuumed, SQLite's WAL is checkpointed (SQLite zeroes freed pages:
   `secure_delete`).

A purge killed half way leaves its job `running` with a dead holder (one that failed half
way, `failed`): `sfm doctor` runs it again from step 2 with the parents it recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Q

from somafractalmemory import backends
from somafractalmemory.embedding.cache import forget_tenant
from somafractalmemory.errors import ConsolidationBusy, FilterRequired
from somafractalmemory.memories import indexing, links, tenancy, tree
from somafractalmemory.memories.jobs import runner
from somafractalmemory.memories.jobs.runner import Progress
from somafractalmemory.memories.models import Job, Link, Memory, VectorTask, retry_integrity
from somafractalmemory.retrieval import filters

log = logging.getLogger(__name__)

CHUNK = 500
KIND = "purge"
RESUMED = "job_resumed"


@dataclass
class Erased:
    memories: int = 0
    links: int = 0
    vectors: int = 0
    parents_resummarized: int = 0
    parents_removed: int = 0
    neighbours_rewritten: int = 0
    cache_entries: int = 0
    jobs: int = 0
    namespaces: list[str] = field(default_factory=list)
    scrubbed: bool = False
    dry_run: bool = False
    job_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def matching(tenant: str, namespace: str | None, where: filters.Node | None) -> list[Memory]:
    """The tenant's memories (of `namespace`, if given) that `where` matches; only the
    fields the erasure needs are loaded."""
    scope = Memory.objects.filter(tenant_id=tenant)
    if namespace is not None:
        scope = scope.filter(namespace=namespace)
    fields = ["id", "tenant_id", "namespace", "type", "level", "importance", "created_at"]
    fields += ["stored_at", "archived_at"]
    if where is None:
        return list(scope.only(*fields).order_by("id"))
    rows = scope.only(*fields, "metadata").order_by("id").iterator(chunk_size=2000)
    return [m for m in rows if filters.matches(where, m.facts())]


def plan_parents(erased: set[str]) -> tuple[set[str], set[str]]:
    """(removed, re-summarized) parents if `erased` went: a parent left without children
    goes, the others are re-summarized; the same one level up."""
    gone, removed, changed = set(erased), set(), set()
    frontier = set(erased)
    while frontier:
        above = {p for ps in links.parent_ids(frontier).values() for p in ps} - gone
        kids = links.child_ids(above)
        emptied = {p for p in above if not set(kids.get(p, ())) - gone}
        gone |= emptied
        removed |= emptied
        changed |= above - emptied
        frontier = above
    return removed, changed - removed


def _count_links(ids: Sequence[str]) -> int:
    found: set[int] = set()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        touching = Link.objects.filter(Q(source_id__in=chunk) | Q(target_id__in=chunk))
        found.update(touching.values_list("id", flat=True))
    return len(found)


def purge(
    *,
    tenant: str,
    actor: str = "system",
    namespace: str | None = None,
    spec: Any = None,
    everything: bool = False,
    dry_run: bool = False,
    progress: Progress = runner.quiet,
    before: Callable[[list[str]], None] | None = None,
) -> Erased:
    """Erase the tenant's memories that `spec` (the search filter language) matches, in
    `namespace` or all of them. An empty filter erases everything only with `everything`.
    `before(ids)` runs before anything is erased (an export)."""
    where = filters.parse(spec)
    if where is None and not everything:
        raise FilterRequired(
            "refusing to erase without a filter: give filters, or all: true to erase "
            + ("the whole namespace" if namespace else "every namespace of the tenant"),
        )
    found = matching(tenant, namespace, where)
    ids = [m.id for m in found]
    names = sorted({m.namespace for m in found})
    if dry_run:
        removed, changed = plan_parents(set(ids))
        return Erased(
            memories=len(ids),
            links=_count_links(ids),
            vectors=sum(m.archived_at is None for m in found),
            parents_resummarized=len(changed),
            parents_removed=len(removed),
            namespaces=names,
            dry_run=True,
        )
    if before is not None:
        before(ids)
    if not found:  # nothing to erase: no job, and no scrub of the whole index
        erased = Erased(namespaces=[namespace] if namespace else [])
    else:
        params = {
            "namespace": namespace,
            "filters": spec,
            "all": everything,
            "holder": runner.HOLDER,
        }
        with _consolidation_paused(tenant, names if namespace is None else [namespace]):
            job = runner.create(tenant, KIND, params)
            work = _erase_with(job, found, progress, params)
            runner.run(job, work, reraise=True)
        erased = Erased(**(job.result or {}))
    tenancy.audit(
        tenant,
        actor,
        "namespace.delete" if namespace and everything else "memory.purge",
        resource=namespace or "",
        details={"filters": spec, "all": everything, **erased.as_dict()},
    )
    return erased


def _erase_with(
    job: Job, found: list[Memory], progress: Progress, params: dict[str, Any]
) -> runner.Work:
    """The purge's work for its job: it reports to the job and to `progress` both."""

    def work(beat: Progress) -> dict[str, Any]:
        def report(done: int, total: int, stage: str = "") -> None:
            beat(done, total, stage)
            progress(done, total, stage)

        return _erase(job, found, report, params)

    return work


@contextmanager
def _consolidation_paused(tenant: str, names: Sequence[str]) -> Iterator[None]:
    """Hold the consolidation lease of each namespace: consolidation would otherwise fold
    memories being erased into new parents meanwhile."""
    with ExitStack() as held:
        for name in sorted(set(names)):
            if not held.enter_context(runner.lease(f"consolidate:{tenant}:{name}", 3600)):
                raise ConsolidationBusy(
                    f"namespace {name!r} is being consolidated; erase again when it is done",
                    details={"namespace": name},
                )
        yield


def _erase(
    job: Job,
    found: list[Memory],
    report: Progress,
    params: dict[str, Any],
) -> dict[str, Any]:
    tenant, namespace = job.tenant_id, params["namespace"]
    names = sorted({m.namespace for m in found} | ({namespace} if namespace else set()))
    erased = Erased(namespaces=names, job_id=job.id)
    ids = [m.id for m in found]
    doomed = set(ids)
    # A resumed purge starts from what the interrupted one recorded (see _erase_chunk).
    parents: set[str] = set((job.result or {}).get("parents", []))
    report(0, len(ids), "erasing")
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        deleted, links_gone, tasks, above = _erase_chunk(job, chunk, doomed)
        parents |= above
        erased.links += links_gone
        indexing.unindex(chunk, tasks)
        erased.memories += deleted
        report(start + len(chunk), len(ids), "erasing")
    erased.vectors = sum(m.archived_at is None for m in found)
    report(0, 1, "rewriting neighbours and parents")
    earlier = [_from_place(tenant, p) for p in (job.result or {}).get("episodes", [])]
    seen = {m.id for m in found}
    gone = [*found, *(m for m in earlier if m.id not in seen)]
    erased.neighbours_rewritten = indexing.rewrite_neighbours(gone)
    refreshed = tree.refresh_parents(tenant, sorted(parents - doomed))
    erased.parents_resummarized = refreshed.resummarized
    erased.parents_removed = refreshed.removed
    report(1, 1, "rewriting neighbours and parents")
    try:
        erased.cache_entries = forget_tenant(tenant)
    except Exception as exc:  # the cache is an accelerator; its entries expire anyway
        log.warning("cached query vectors of %s not dropped: %s", tenant, exc)
    if namespace and params["all"]:  # the namespace is gone: so are its jobs' records
        erased.jobs = (
            Job.objects.filter(tenant_id=tenant, params__namespace=namespace)
            .exclude(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
            .delete()[0]
        )
    report(0, 1, "scrubbing storage")
    erased.scrubbed = scrub()
    report(1, 1, "scrubbing storage")
    return erased.as_dict()


def _erase_chunk(
    job: Job, chunk: list[str], doomed: set[str]
) -> tuple[int, int, list[VectorTask], set[str]]:
    """One transaction: the rows, their links both ways, outbox deletes of their vectors,
    and the parents to refresh recorded in the job (so that a resumed purge has them)."""

    def erase() -> tuple[int, int, list[VectorTask], set[str]]:
        with transaction.atomic():
            rows_here = list(
                Memory.objects.filter(tenant_id=job.tenant_id, id__in=chunk).only(*PLACE)
            )
            above = {p for ps in links.parent_ids(chunk).values() for p in ps} - doomed
            gone = Link.objects.filter(Q(source_id__in=chunk) | Q(target_id__in=chunk))
            links_gone = gone.delete()[0]
            rows = Memory.objects.filter(tenant_id=job.tenant_id, id__in=chunk).delete()
            erased = rows[1].get(Memory._meta.label, 0)
            tasks = indexing.owe(chunk, VectorTask.Action.DELETE)
            state = job.result or {}
            places = [_place(m) for m in rows_here if m.type == "episodic"]
            job.result = {
                "parents": sorted(above | set(state.get("parents", []))),
                "episodes": [*state.get("episodes", []), *places],
            }
            job.heartbeat_at = datetime.now(UTC)
            job.save(update_fields=["result", "heartbeat_at"])
        return erased, links_gone, tasks, above

    return retry_integrity(erase)


PLACE = ("id", "tenant_id", "namespace", "type", "created_at", "stored_at")


def _place(memory: Memory) -> list[str]:
    """Where an erased episode stood, for rewriting its neighbours after a crash."""
    return [
        memory.namespace,
        memory.created_at.isoformat(),
        memory.stored_at.isoformat(),
        memory.id,
    ]


def _from_place(tenant: str, place: Sequence[str]) -> Memory:
    namespace, created, stored, memory_id = place
    return Memory(
        id=memory_id,
        tenant_id=tenant,
        namespace=namespace,
        type="episodic",
        created_at=datetime.fromisoformat(created),
        stored_at=datetime.fromisoformat(stored),
    )


def scrub() -> bool:
    """Remove erased bytes that storage keeps after a delete: the vector index's, and on
    SQLite the full-text index's old segments (merged) and the WAL's (its pages are zeroed
    by `secure_delete`). PostgreSQL keeps the sealed bytes of deleted rows until it reuses
    the space (see docs/security.md)."""
    done = backends.vector_index().scrub()
    on_disk = connection.vendor == "sqlite" and not connection.is_in_memory_db()  # type: ignore[attr-defined]
    if on_disk:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = cursor.fetchone()[0]
        done = done and not busy
    return done


def interrupted() -> list[Job]:
    """Purge jobs that did not finish: their process died (or stopped beating), or they
    failed half way. Resuming finishes them."""
    unfinished = Job.objects.filter(kind=KIND).exclude(status=Job.Status.SUCCEEDED)
    stale = datetime.now(UTC) - runner.STALE_AFTER

    def given_up(job: Job) -> bool:
        holder = str(job.params.get("holder", ""))
        if (job.error or {}).get("code") == RESUMED or runner.holder_alive(holder):
            return False
        beat = job.heartbeat_at or job.created_at
        return job.status == Job.Status.FAILED or runner.holder_dead(holder) or beat < stale

    return [job for job in unfinished.order_by("created_at") if given_up(job)]


def resume(job: Job, progress: Progress = runner.quiet) -> Erased:
    """Finish an interrupted purge: what still matches goes, the parents it recorded are
    refreshed. The old job is marked interrupted; a new one does the work."""
    params = job.params
    found = matching(job.tenant_id, params.get("namespace"), filters.parse(params.get("filters")))
    names = [params["namespace"]] if params.get("namespace") else [m.namespace for m in found]
    with _consolidation_paused(job.tenant_id, names):
        job.status, job.finished_at = Job.Status.FAILED, datetime.now(UTC)
        job.error = {"code": RESUMED, "message": "resumed by a later job", "details": None}
        job.save(update_fields=["status", "error", "finished_at"])
        again = runner.create(job.tenant_id, KIND, {**params, "holder": runner.HOLDER})
        again.result = job.result  # what the first run recorded, kept if this one fails too
        again.save(update_fields=["result"])
        runner.run(again, _erase_with(again, found, progress, params), reraise=True)
    erased = Erased(**(again.result or {}))
    tenancy.audit(
        job.tenant_id,
        "system",
        "memory.purge.resumed",
        resource=job.id,
        details={"filters": params.get("filters"), **erased.as_dict()},
    )
    return erased
