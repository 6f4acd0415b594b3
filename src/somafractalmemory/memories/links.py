"""Links between memories: typed edges in SQL, and the walks over them.

`derived_from` goes from a consolidated parent to each child; `similar` from a new memory to
its close neighbours; `follows` from an episode to the one before it. Clients add any kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q

from somafractalmemory.errors import LinkNotFound, MemoryNotFound, ValidationFailed
from somafractalmemory.memories.models import EPISODE_ORDER, Link, Memory

KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_DEPTH = 5
MAX_NODES = 500


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str
    weight: float


def _edge(link: Link) -> Edge:
    return Edge(link.source_id, link.target_id, link.kind, link.weight)


def _check_kind(kind: str) -> None:
    if not KIND.match(kind):
        raise ValidationFailed(
            "link kind must be lower-case letters, digits and `_`, starting with a letter "
            "(at most 64)",
            details={"kind": kind},
        )


def _memory(tenant: str, memory_id: str) -> Memory:
    found = Memory.objects.filter(tenant_id=tenant, id=memory_id).first()
    if found is None:
        raise MemoryNotFound(f"no memory {memory_id!r}", details={"id": memory_id})
    return found


RESERVED = frozenset({Link.DERIVED_FROM})
"""Kinds only the service makes: `derived_from` edges are the hierarchy, which deletes and
rewrites parents."""


def add(tenant: str, source: str, target: str, kind: str, weight: float = 1.0) -> Edge:
    """Create (or re-weight) the link `source -kind-> target`; both must be the tenant's."""
    _check_kind(kind)
    if kind in RESERVED:
        raise ValidationFailed(
            f"link kind {kind!r} is made by consolidation only", details={"kind": kind}
        )
    if source == target:
        raise ValidationFailed("a memory cannot link to itself", details={"id": source})
    _memory(tenant, source)
    _memory(tenant, target)
    link, _ = Link.objects.update_or_create(
        source_id=source,
        target_id=target,
        kind=kind,
        defaults={"tenant_id": tenant, "weight": weight},
    )
    return _edge(link)


def add_many(tenant: str, edges: Iterable[Edge]) -> int:
    """Create links the service derives (ends known to exist); repeats are ignored."""
    rows = [
        Link(tenant_id=tenant, source_id=e.source, target_id=e.target, kind=e.kind, weight=e.weight)
        for e in edges
        if e.source != e.target
    ]
    Link.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def remove(tenant: str, source: str, target: str, kind: str) -> None:
    if kind in RESERVED:
        raise ValidationFailed(
            f"link kind {kind!r} is made by consolidation only", details={"kind": kind}
        )
    deleted, _ = Link.objects.filter(
        tenant_id=tenant, source_id=source, target_id=target, kind=kind
    ).delete()
    if not deleted:
        raise LinkNotFound(
            f"no {kind!r} link from {source!r} to {target!r}",
            details={"source": source, "target": target, "kind": kind},
        )


def of(
    tenant: str, memory_id: str, kinds: Sequence[str] = (), *, within: Sequence[str] = ()
) -> list[Edge]:
    """Every link into or out of a memory (only those with both ends in the namespaces
    `within`, when given)."""
    _memory(tenant, memory_id)
    query = Link.objects.filter(Q(source_id=memory_id) | Q(target_id=memory_id), tenant_id=tenant)
    if kinds:
        query = query.filter(kind__in=list(kinds))
    if within:
        query = query.filter(source__namespace__in=list(within), target__namespace__in=list(within))
    return [_edge(link) for link in query.order_by("kind", "source_id", "target_id")]


def children(tenant: str, memory_id: str) -> list[Memory]:
    """What a consolidated memory was made from, in time order."""
    _memory(tenant, memory_id)
    return list(
        Memory.objects.filter(
            tenant_id=tenant, links_in__source_id=memory_id, links_in__kind=Link.DERIVED_FROM
        ).order_by(*EPISODE_ORDER)
    )


def parents(tenant: str, memory_id: str) -> list[Memory]:
    """The consolidated memories made (in part) from this one."""
    _memory(tenant, memory_id)
    return list(
        Memory.objects.filter(
            tenant_id=tenant, links_out__target_id=memory_id, links_out__kind=Link.DERIVED_FROM
        ).order_by("level", "created_at", "id")
    )


def parent_ids(ids: Iterable[str]) -> dict[str, list[str]]:
    """Child id -> its parents' ids."""
    found: dict[str, list[str]] = {}
    rows = Link.objects.filter(target_id__in=list(ids), kind=Link.DERIVED_FROM)
    for source, target in rows.values_list("source_id", "target_id"):
        found.setdefault(target, []).append(source)
    return found


def child_ids(ids: Iterable[str]) -> dict[str, list[str]]:
    """Parent id -> its children's ids."""
    found: dict[str, list[str]] = {}
    rows = Link.objects.filter(source_id__in=list(ids), kind=Link.DERIVED_FROM)
    for source, target in rows.values_list("source_id", "target_id"):
        found.setdefault(source, []).append(target)
    return found


def descendants(ids: Iterable[str], *, max_nodes: int = 10_000) -> set[str]:
    """Everything below these memories in the hierarchy (not themselves)."""
    frontier, seen = set(ids), set[str]()
    while frontier and len(seen) < max_nodes:
        below = {c for cs in child_ids(frontier).values() for c in cs} - seen
        seen |= below
        frontier = below
    return seen


@dataclass(frozen=True)
class Graph:
    nodes: list[Memory]
    edges: list[Edge]
    truncated: bool


def graph(tenant: str, memory_id: str, *, depth: int = 1, kinds: Sequence[str] = ()) -> Graph:
    """The memories within `depth` links of one (either direction), and those links."""
    if not 0 <= depth <= MAX_DEPTH:
        raise ValidationFailed(f"depth must be 0 to {MAX_DEPTH}", details={"depth": depth})
    for kind in kinds:
        _check_kind(kind)
    _memory(tenant, memory_id)
    seen, frontier = {memory_id}, {memory_id}
    edges: dict[tuple[str, str, str], Edge] = {}
    truncated = False
    with transaction.atomic():  # one consistent snapshot on PostgreSQL
        for _ in range(depth):
            query = Link.objects.filter(
                Q(source_id__in=frontier) | Q(target_id__in=frontier), tenant_id=tenant
            )
            if kinds:
                query = query.filter(kind__in=list(kinds))
            found = [_edge(link) for link in query]
            frontier = set()
            for edge in found:
                for end in (edge.source, edge.target):
                    if end not in seen:
                        if len(seen) >= MAX_NODES:
                            truncated = True
                            continue
                        seen.add(end)
                        frontier.add(end)
                if edge.source in seen and edge.target in seen:
                    edges[(edge.source, edge.target, edge.kind)] = edge
            if not frontier:
                break
        rows = Memory.objects.in_bulk(list(seen))
    nodes = sorted(rows.values(), key=lambda m: (m.id != memory_id, m.level, m.created_at, m.id))
    return Graph(
        nodes, sorted(edges.values(), key=lambda e: (e.kind, e.source, e.target)), truncated
    )
