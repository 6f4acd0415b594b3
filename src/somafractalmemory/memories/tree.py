"""The consolidation tree's write side: parents made or refreshed from their children.

A parent (level 1 and up) summarizes its children, links `derived_from` to each, and carries
what they share (the earliest event time, the highest importance, common metadata). When
children change or go, `refresh_parents` re-summarizes each parent from the children it has
left, or removes it when none is left, and climbs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from somafractalmemory import backends
from somafractalmemory.conf import get_config
from somafractalmemory.errors import MemoryNotFound
from somafractalmemory.memories import indexing, links
from somafractalmemory.memories.identity import new_id, sources_hash_of
from somafractalmemory.memories.models import Link, Memory

MAX_LEVEL = 6


def parent_type(level: int) -> str:
    return "semantic" if level == 1 else "summary"


def sources_hash(children: Sequence[Memory]) -> str:
    """Identity of what a parent summarizes: its children's ids and contents."""
    return sources_hash_of([(c.id, c.content_hash) for c in children])


def _common_metadata(children: Sequence[Memory]) -> dict[str, Any]:
    """The metadata every child shares (same key, same value): filters keep finding parents."""
    first, *rest = [c.metadata for c in children]
    return {k: v for k, v in first.items() if all(k in m and m[k] == v for m in rest)}


def _summarized(parent: Memory, children: Sequence[Memory]) -> None:
    """Set a parent's content and derived fields from its children (time-ordered)."""
    children = sorted(children, key=lambda c: c.place)
    text = backends.summarizer().summarize(
        [c.content for c in children], max_bytes=get_config().max_content_bytes
    )
    if not text.strip():
        text = children[0].content
    if text != parent.content:
        parent.set_content(text)  # a changed parent is grouped again one level up
    parent.importance = max(c.importance for c in children)
    parent.created_at = min(c.created_at for c in children)
    parent.span_end = max(c.span_end or c.created_at for c in children)
    parent.metadata = _common_metadata(children)
    parent.sources_hash = sources_hash(children)


Made = tuple[Memory | None, str, int, Sequence[Memory]]
"""A parent to save: (the existing parent or None, namespace, level, children)."""


def save_parents(tenant: str, made: Sequence[Made]) -> list[Memory]:
    """Create or refresh consolidated parents. One transaction with their links and outbox
    rows, then the index."""
    now = datetime.now(UTC)
    parents: list[Memory] = []
    for held, namespace, level, children in made:
        parent = held or Memory(
            id=new_id("mem"),
            tenant_id=tenant,
            namespace=namespace,
            type=parent_type(level),
            level=level,
            content="",
            embedding_id=new_id("vec"),
            stored_at=now,
        )
        _summarized(parent, children)
        parents.append(parent)
    if not parents:
        return []
    vectors = indexing.embed_texts([p.content for p in parents])
    with transaction.atomic():
        # A parent deleted meanwhile stays deleted (a plain save() would insert it again).
        held_ids = [p.id for p, (held, *_) in zip(parents, made, strict=True) if held]
        locked = Memory.objects.select_for_update().filter(id__in=held_ids)
        alive = set(locked.values_list("id", flat=True))
        keep = [n for n, (held, *_) in enumerate(made) if held is None or parents[n].id in alive]
        for n in keep:
            if made[n][0] is None:
                parents[n].save(force_insert=True)
            else:
                parents[n].save(force_update=True)
        links.add_many(
            tenant,
            (
                links.Edge(parents[n].id, child.id, Link.DERIVED_FROM, 1.0)
                for n in keep
                for child in made[n][3]
            ),
        )
        tasks = indexing.owe(parents[n].id for n in keep)
    saved = [parents[n] for n in keep]
    indexing.index_or_owe(saved, vectors[keep], tasks)
    return saved


@dataclass
class Refreshed:
    resummarized: int = 0
    removed: int = 0


def refresh_parents(
    tenant: str, parent_ids: Iterable[str], done: Refreshed | None = None
) -> Refreshed:
    """After children changed or went: re-summarize each parent from the children it has
    left, or delete it when none is left; then the same one level up."""
    done = done or Refreshed()
    ids = list(dict.fromkeys(parent_ids))
    if not ids:
        return done
    # Only consolidated memories are parents (clients cannot make `derived_from` links).
    rows = Memory.objects.filter(level__gte=1).in_bulk(ids)
    kids = links.child_ids(ids)
    alive = [rows[i] for i in ids if i in rows and kids.get(i)]
    children = Memory.objects.in_bulk([c for p in alive for c in kids[p.id]])
    left = {p.id: [children[c] for c in kids[p.id] if c in children] for p in alive}
    # Parents with no child left (or whose children went meanwhile) go.
    above: list[str] = []
    for parent_id in [i for i in ids if i in rows and not left.get(i)]:
        with contextlib.suppress(MemoryNotFound):  # deleted meanwhile
            above += indexing.delete_one(parent_id, tenant)
            done.removed += 1
    stale = [
        (p, left[p.id]) for p in alive if left[p.id] and p.sources_hash != sources_hash(left[p.id])
    ]
    if stale:
        save_parents(tenant, [(p, p.namespace, p.level, c) for p, c in stale])
        done.resummarized += len(stale)
        above += [g for gs in links.parent_ids([p.id for p, _ in stale]).values() for g in gs]
    return refresh_parents(tenant, above, done)
