"""Links made on store: `similar` to the closest memories, `follows` to the episode before.

Derived links are best effort: the memories are stored (and acknowledged) whatever happens
here. A batch's links to memories already in the index are made off the request, on one
thread (`POOL`), after the batch is acknowledged.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import pairwise
from typing import Any

from django.db import DatabaseError, connections
from django.db.models import QuerySet

from somafractalmemory import backends
from somafractalmemory.conf import get_config
from somafractalmemory.errors import IndexUnavailable
from somafractalmemory.memories import links
from somafractalmemory.memories.models import EPISODE_ORDER, Link, Memory, episodes_of, valid_at
from somafractalmemory.retrieval import filters

log = logging.getLogger(__name__)

Neighbours = dict[int, list[tuple[str, float]]]
"""Per new memory (its position): (id, cosine) of memories close to it."""
POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfm-link")


def neighbours(
    tenant: str, candidates: list[tuple[int, str, Any]]
) -> tuple[Neighbours, Neighbours]:
    """(near duplicates, similar) already in the index for each new memory, given as
    (position, namespace, vector)."""
    config = get_config()
    top_k = max(3, config.link_max)
    near: Neighbours = {}
    similar: Neighbours = {}
    import numpy as np

    by_namespace: dict[str, list[tuple[int, Any]]] = {}
    for i, namespace, vector in candidates:
        by_namespace.setdefault(namespace, []).append((i, vector))
    try:
        index = backends.vector_index()
        for namespace, rows in by_namespace.items():
            found = index.nearest(
                np.asarray([v for _, v in rows]), tenant=tenant, namespace=namespace, top_k=top_k
            )
            threshold = config.near_duplicate_threshold
            for (i, _), hits in zip(rows, found, strict=True):
                near[i] = [(h.id, round(h.score, 4)) for h in hits[:3] if h.score >= threshold]
                similar[i] = [(h.id, h.score) for h in hits if h.score >= config.link_similarity]
    except IndexUnavailable as exc:
        log.warning("neighbour search skipped (no near duplicates, no similar links): %s", exc)
    return near, similar


CONFLICT_CANDIDATES = 5


def conflicts(
    tenant: str,
    candidates: list[tuple[int, str, Any]],
    *,
    skip: dict[int, set[str]],
    now: datetime,
) -> Neighbours:
    """(id, cosine) of the valid semantic memories close to each new semantic memory, given
    as (position, namespace, vector), but not near-duplicates (nor the ids in `skip`, the
    versions it replaced): facts that may say otherwise. Reported, never closed."""
    config = get_config()
    low, high = config.conflict_similarity, config.near_duplicate_threshold
    where = filters.parse({"type": "semantic"})
    found: Neighbours = {}
    try:
        index = backends.vector_index()
        for i, namespace, vector in candidates:
            hits = index.search(
                vector, tenant=tenant, namespace=namespace, where=where, top_k=CONFLICT_CANDIDATES
            )
            found[i] = [
                (h.id, round(h.score, 4))
                for h in hits
                if low <= h.score < high and h.id not in skip.get(i, set())
            ]
    except IndexUnavailable as exc:
        log.warning("conflict search skipped: %s", exc)
        return {}
    ids = {h for hits in found.values() for h, _ in hits}
    valid = set(
        Memory.objects.filter(
            valid_at(now, now), tenant_id=tenant, id__in=ids, archived_at=None
        ).values_list("id", flat=True)
    )
    return {i: [(h, s) for h, s in hits if h in valid] for i, hits in found.items()}


def link_new(
    tenant: str, created: dict[int, Memory], similar: Neighbours, vectors: Any, order: list[int]
) -> None:
    """`similar` links to the closest memories (in the index or in this batch) and `follows`
    links from each new episode to the episode before it."""
    import numpy as np

    config = get_config()
    edges: list[links.Edge] = []
    try:
        # Within the batch: the index did not hold these memories when it was searched.
        matrix = np.asarray(vectors)
        spaces = np.asarray([created[i].namespace for i in order])
        close = (matrix @ matrix.T >= config.link_similarity) & (spaces[:, None] == spaces)
        np.fill_diagonal(close, False)
        cosine = matrix @ matrix.T
        for a, i in enumerate(order):
            found = dict(similar.get(i, []))
            for b in np.flatnonzero(close[a]):
                other = created[order[b]].id
                found[other] = max(found.get(other, 0.0), float(cosine[a, b]))
            edges += _best_similar(created[i].id, found, config.link_max)
        edges += _follows([m for m in created.values() if m.type == "episodic"])
        links.add_many(tenant, edges)
    except (DatabaseError, IndexUnavailable) as exc:
        log.warning("auto-linking skipped for %d memories: %s", len(created), exc)


def _best_similar(source: str, found: dict[str, float], most: int) -> list[links.Edge]:
    best = sorted(((t, w) for t, w in found.items() if t != source), key=lambda kv: (-kv[1], kv[0]))
    return [links.Edge(source, t, Link.SIMILAR, round(w, 4)) for t, w in best[:most]]


def link_later(tenant: str, rows: list[tuple[str, str, Any]]) -> None:
    """Queue `similar` links from a stored batch, (id, namespace, vector) per memory, to its
    neighbours in the index."""
    POOL.submit(_link_from_index, tenant, rows)


def _link_from_index(tenant: str, rows: list[tuple[str, str, Any]]) -> None:
    try:
        _, similar = neighbours(tenant, [(n, ns, v) for n, (_, ns, v) in enumerate(rows)])
        most = get_config().link_max
        edges = [
            edge
            for n, (memory_id, _, _) in enumerate(rows)
            for edge in _best_similar(memory_id, dict(similar.get(n, [])), most)
        ]
        links.add_many(tenant, edges)
    except Exception as exc:  # e.g. a row deleted meanwhile; the memories are stored anyway
        log.warning("similar links from the index skipped for %d memories: %s", len(rows), exc)
    finally:
        connections.close_all()


def episode_reads(
    tenant: str, namespace: str, low: datetime, high: datetime
) -> tuple[QuerySet[Memory], QuerySet[Memory]]:
    """The namespace's episodes before `low` (latest first) and from `low` to `high` (in
    order), each read seeking its range in the index (`episodes_of`)."""
    scope = Memory.objects.filter(episodes_of(tenant, namespace))
    return (
        scope.filter(created_at__lt=low).order_by(*(f"-{f}" for f in EPISODE_ORDER)),
        scope.filter(created_at__range=(low, high)).order_by(*EPISODE_ORDER),
    )


def _follows(episodes: list[Memory]) -> list[links.Edge]:
    """Each new episode -> the episode just before it in its namespace (event time, then
    arrival). One range query per namespace."""
    groups: dict[tuple[str, str], list[Memory]] = {}
    for m in episodes:
        groups.setdefault((m.tenant_id, m.namespace), []).append(m)
    edges = []
    for (tenant, namespace), group in groups.items():
        low, high = min(m.created_at for m in group), max(m.created_at for m in group)
        before, around = episode_reads(tenant, namespace, low, high)
        sequence = [*before.values_list("id", flat=True)[:1], *around.values_list("id", flat=True)]
        new = {m.id for m in group}
        edges += [
            links.Edge(current, previous, Link.FOLLOWS, 1.0)
            for previous, current in pairwise(sequence)
            if current in new
        ]
    return edges
