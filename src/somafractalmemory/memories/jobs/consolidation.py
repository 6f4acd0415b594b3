"""The fractal memory's consolidation, level by level (searches over the tree: `recall`).

Consolidation folds the memories of one level that have no parent yet into parents one level
up (episodes -> semantic memories -> summaries -> summaries of summaries), grouping them by
time and meaning (`retrieval.grouping`). Existing parents are seeds: a new episode close to
one joins it (the parent is re-summarized) instead of starting a new parent. Parents whose
children changed are re-summarized first. A level stops the climb when it ends with at most
one parent or made nothing new. Re-running with nothing new changes nothing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from somafractalmemory.conf import get_config
from somafractalmemory.errors import ConsolidationBusy
from somafractalmemory.memories import indexing, links, tree
from somafractalmemory.memories.identity import sources_hash_of, utc
from somafractalmemory.memories.jobs import runner
from somafractalmemory.memories.models import DEFAULT_TENANT, EPISODE_ORDER, Link, Memory
from somafractalmemory.retrieval import grouping

WINDOW_GROWTH = 7
SIMILARITY_STEP = 0.1
MIN_SIMILARITY = 0.2
CHUNK = 200


@dataclass
class LevelResult:
    level: int
    """The level of the children (0: episodes folded into semantic memories)."""
    considered: int = 0
    created: int = 0
    updated: int = 0
    folded: int = 0


@dataclass
class Consolidation:
    namespace: str
    refreshed: int = 0
    """Parents re-summarized because their children changed."""
    levels: list[LevelResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "refreshed": self.refreshed,
            "created": sum(r.created for r in self.levels),
            "updated": sum(r.updated for r in self.levels),
            "levels": [vars(r) for r in self.levels],
        }


def window_seconds(level: int) -> float:
    return float(get_config().consolidation_window_seconds) * WINDOW_GROWTH**level


def similarity(level: int) -> float:
    return max(MIN_SIMILARITY, get_config().consolidation_similarity - SIMILARITY_STEP * level)


def _refresh_changed(tenant: str, namespace: str) -> int:
    """Re-summarize the namespace's parents whose children changed (content or membership)."""
    parents = list(
        Memory.objects.filter(tenant_id=tenant, namespace=namespace, level__gte=1).only(
            "id", "sources_hash", "level"
        )
    )
    kids = links.child_ids([p.id for p in parents])
    hashes = dict(
        Memory.objects.filter(id__in=[c for cs in kids.values() for c in cs]).values_list(
            "id", "content_hash"
        )
    )
    stale = []
    for p in sorted(parents, key=lambda p: p.level):  # lowest first: refresh climbs
        children = [c for c in kids.get(p.id, []) if c in hashes]
        key = sources_hash_of([(c, hashes[c]) for c in children])
        if key != p.sources_hash:
            stale.append(p.id)
    tree.refresh_parents(tenant, stale)
    return len(stale)


def _unfolded(tenant: str, namespace: str, level: int, since: Any, until: Any) -> list[Memory]:
    query = Memory.objects.filter(
        tenant_id=tenant, namespace=namespace, level=level, archived_at__isnull=True
    ).exclude(links_in__kind=Link.DERIVED_FROM)
    if since is not None:
        query = query.filter(created_at__gte=since)
    if until is not None:
        query = query.filter(created_at__lt=until)
    return list(query.order_by(*EPISODE_ORDER))


def _near_new(items: list[Memory], window: float) -> list[Memory]:
    """The items a run must group: the new ones (never considered) and the older unfolded
    ones within `window` of a new one (the only ones a new item can change)."""
    fresh = sorted(m.created_at.timestamp() for m in items if m.considered_at is None)
    if not fresh:
        return []

    def near(t: float) -> bool:
        at = bisect.bisect_left(fresh, t)
        return any(abs(fresh[j] - t) <= window for j in (at - 1, at) if 0 <= j < len(fresh))

    return [m for m in items if m.considered_at is None or near(m.created_at.timestamp())]


def _consolidate_level(
    tenant: str, namespace: str, level: int, since: Any, until: Any, report: runner.Progress
) -> LevelResult:
    result = LevelResult(level)
    span = (since, until) if level == 0 else (None, None)
    items = _unfolded(tenant, namespace, level, *span)
    window = window_seconds(level)
    items = _near_new(items, window)
    if not items:
        return result  # nothing new at this level: re-running changes nothing
    result.considered = len(items)
    low, high = items[0].created_at.timestamp(), items[-1].created_at.timestamp()
    seeds_rows = [
        p
        for p in Memory.objects.filter(
            tenant_id=tenant, namespace=namespace, level=level + 1, archived_at__isnull=True
        )
        if (p.span_end or p.created_at).timestamp() >= low - window
        and p.created_at.timestamp() <= high + window
    ]
    vectors = indexing.vectors_of([*items, *seeds_rows])
    sizes = {k: len(v) for k, v in links.child_ids([p.id for p in seeds_rows]).items()}
    seeds = [
        grouping.seed(
            p.id,
            p.created_at.timestamp(),
            (p.span_end or p.created_at).timestamp(),
            vectors[p.id] * max(1, sizes.get(p.id, 1)),
        )
        for p in seeds_rows
    ]
    groups = grouping.group(
        [grouping.Item(m.id, m.created_at.timestamp(), vectors[m.id]) for m in items],
        window=window,
        threshold=similarity(level),
        seeds=seeds,
    )
    rows = {m.id: m for m in items}
    seed_rows = {p.id: p for p in seeds_rows}
    made: list[tree.Made] = []
    for g in groups:
        new = [rows[i] for i in g.members]
        if g.key is not None:
            parent = seed_rows[g.key]
            held = links.children(tenant, parent.id)
            made.append((parent, namespace, level + 1, [*held, *new]))
            result.updated += 1
        elif len(new) >= 2:
            made.append((None, namespace, level + 1, new))
            result.created += 1
        else:
            continue
        result.folded += len(new)
    for start in range(0, len(made), CHUNK):
        report(start, len(made), f"level {level}: saving parents")
        tree.save_parents(tenant, made[start : start + CHUNK])
    # Left alone (too far from anything) until something new arrives at this level.
    Memory.objects.filter(id__in=[m.id for m in items]).update(considered_at=timezone.now())
    updated = [p.id for p, *_ in made if p is not None]
    above = links.parent_ids(updated)
    tree.refresh_parents(tenant, [g for gs in above.values() for g in gs])
    report(len(made), len(made), f"level {level}: done")
    return result


def consolidate(
    namespace: str,
    *,
    tenant: str = DEFAULT_TENANT,
    since: datetime | None = None,
    until: datetime | None = None,
    report: runner.Progress = runner.quiet,
) -> Consolidation:
    """Consolidate one namespace (episodes in [since, until) when given)."""
    outcome = Consolidation(namespace)
    with runner.lease(f"consolidate:{tenant}:{namespace}", 3600) as acquired:
        if not acquired:
            raise ConsolidationBusy(
                f"namespace {namespace!r} is being consolidated already; try again when done",
                details={"namespace": namespace},
            )
        outcome.refreshed = _refresh_changed(tenant, namespace)
        for level in range(tree.MAX_LEVEL):
            result = _consolidate_level(tenant, namespace, level, since, until, report)
            outcome.levels.append(result)
            parents = Memory.objects.filter(
                tenant_id=tenant, namespace=namespace, level=level + 1
            ).count()
            if parents <= 1:
                break  # a single group (or none) at the top: the climb ends
    return outcome


def start(
    namespace: str,
    *,
    tenant: str = DEFAULT_TENANT,
    since: datetime | None = None,
    until: datetime | None = None,
    wait: bool = False,
) -> Any:
    """Consolidation as a job: queued on the job thread, or run to the end with `wait`."""
    since, until = (utc(t) if t is not None else None for t in (since, until))
    params = {
        "namespace": namespace,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
    }
    job = runner.create(tenant, "consolidate", params)

    def work(progress: runner.Progress) -> dict[str, Any]:
        done = consolidate(namespace, tenant=tenant, since=since, until=until, report=progress)
        return done.as_dict()

    return runner.run(job, work) if wait else runner.submit(job, work)


def namespaces_to_consolidate(tenant: str | None = None) -> list[tuple[str, str]]:
    """(tenant, namespace) pairs holding episodes without a parent."""
    query = Memory.objects.filter(level=0, archived_at__isnull=True).exclude(
        links_in__kind=Link.DERIVED_FROM
    )
    if tenant is not None:
        query = query.filter(tenant_id=tenant)
    return sorted(set(query.values_list("tenant_id", "namespace")))
