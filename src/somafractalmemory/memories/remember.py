"""Storing and changing memories: store (dedupe, limits, quota), get, update, delete.

SQL commits first (that is the acknowledgement), with the outbox tasks that owe the index
write; the index is written right after, in the same request (`indexing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from somafractalmemory import metrics
from somafractalmemory.conf import get_config
from somafractalmemory.errors import Conflict, MemoryNotFound
from somafractalmemory.memories import indexing, limits, linking, tree
from somafractalmemory.memories.identity import content_hash, new_id, utc
from somafractalmemory.memories.models import DEFAULT_TENANT, Memory, data_key
from somafractalmemory.memories.tenancy import ensure_tenant


@dataclass(frozen=True)
class NewMemory:
    content: str
    namespace: str | None = None
    type: str = "episodic"
    importance: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    dedupe: bool = True


@dataclass(frozen=True)
class Stored:
    memory: Memory
    deduplicated: bool = False
    """True when the content was already stored in the namespace: this is that memory."""
    near_duplicates: list[tuple[str, float]] = field(default_factory=list)
    """(id, cosine) of other memories of the namespace almost identical in meaning."""


def store_many(
    items: Sequence[NewMemory], *, tenant: str = DEFAULT_TENANT, report_near: bool = False
) -> list[Stored]:
    """Store memories (all or none): validate, deduplicate, embed, commit rows and outbox,
    index. With `report_near`, also report near-duplicates (one extra search per item)."""
    config = get_config()
    limits.check_batch(len(items))
    if not items:
        return []
    for item in items:
        limits.check_content(item.content)
        limits.check_metadata(item.metadata)
    keys = [
        (item.namespace or config.namespace, content_hash(item.content, tenant)) for item in items
    ]
    existing = {
        (m.namespace, m.content_hash): m
        for m in Memory.objects.filter(
            tenant_id=tenant,
            namespace__in={ns for ns, _ in keys},
            content_hash__in={h for _, h in keys},
        ).order_by("stored_at")
    }
    fresh = [
        i
        for i, (item, key) in enumerate(zip(items, keys, strict=True))
        if not (item.dedupe and key in existing)
    ]
    # Within the batch, a repeated content with dedupe is the first occurrence.
    first: dict[tuple[str, str], int] = {}
    for i in fresh:
        first.setdefault(keys[i], i)
    fresh = [i for i in fresh if not items[i].dedupe or first[keys[i]] == i]
    limits.check_quota(tenant, [items[i].content for i in fresh])
    # Embed before writing, so a failing model leaves nothing half-stored.
    vectors = indexing.embed_texts([items[i].content for i in fresh]) if fresh else []
    now = datetime.now(UTC)
    created: dict[int, Memory] = {}
    for position, i in enumerate(fresh):
        memory = Memory(
            id=new_id("mem"),
            tenant_id=tenant,
            namespace=keys[i][0],
            type=items[i].type,
            metadata=items[i].metadata,
            importance=items[i].importance,
            created_at=utc(items[i].created_at or now),
            # Distinct arrival times keep the batch's order among equal event times.
            stored_at=now + timedelta(microseconds=position),
        )
        memory.set_content(items[i].content)
        created[i] = memory
    near: linking.Neighbours = {}
    similar: linking.Neighbours = {}
    if report_near:
        near, similar = linking.neighbours(
            tenant, [(i, keys[i][0], v) for i, v in zip(fresh, vectors, strict=True)]
        )
    # A repeat raises the stored memory's importance to the larger of the two.
    raised: dict[str, Memory] = {}
    for item, key in zip(items, keys, strict=True):
        held = existing.get(key)
        if item.dedupe and held is not None and item.importance > held.importance:
            held.importance = item.importance
            raised[held.id] = held
    # The tenant's current data key, committed before anything is sealed with it.
    data_key(tenant, check=True)
    with transaction.atomic():
        ensure_tenant(tenant)
        # Again, under the tenant's lock: a concurrent store may have committed since.
        limits.check_quota(tenant, [items[i].content for i in fresh], lock=True)
        Memory.objects.bulk_create(created.values())
        for memory in raised.values():
            memory.updated_at = datetime.now(UTC)
            kept = Memory.objects.filter(pk=memory.pk).update(
                importance=memory.importance, updated_at=memory.updated_at
            )
            if not kept:  # deleted since the dedupe read: nothing was stored for the repeat
                raise Conflict(
                    f"memory {memory.id!r}, which this content repeats, was deleted meanwhile; "
                    "store it again",
                    details={"id": memory.id},
                )
        tasks = indexing.owe(m.id for m in [*created.values(), *raised.values()])
    metrics.STORED.inc(len(created))
    if created:
        indexing.index_or_owe(list(created.values()), vectors, tasks[: len(created)])
        if config.auto_link:
            linking.link_new(tenant, created, similar, vectors, fresh)
            if not report_near:  # batches: the index's neighbours are linked off the request
                linking.link_later(
                    tenant,
                    [
                        (created[i].id, created[i].namespace, v)
                        for i, v in zip(fresh, vectors, strict=True)
                    ],
                )
    if raised:
        indexing.index_or_owe(list(raised.values()), None, tasks[len(created) :])
    results = []
    for i, (item, key) in enumerate(zip(items, keys, strict=True)):
        if i in created:
            results.append(Stored(created[i], near_duplicates=near.get(i, [])))
        elif key in existing and item.dedupe:
            results.append(Stored(existing[key], deduplicated=True))
        else:
            results.append(Stored(created[first[key]], deduplicated=True))
    return results


def remember_many(items: Sequence[NewMemory], *, tenant: str = DEFAULT_TENANT) -> list[Memory]:
    """Store memories; the stored (or, for repeats, the existing) memory of each item."""
    return [stored.memory for stored in store_many(items, tenant=tenant)]


def remember(item: NewMemory, *, tenant: str = DEFAULT_TENANT) -> Memory:
    return remember_many([item], tenant=tenant)[0]


def get(memory_id: str, *, tenant: str = DEFAULT_TENANT, lock: bool = False) -> Memory:
    """One memory of the tenant (archived ones too); with `lock`, the row as it is now,
    locked for the caller's transaction (a change then never races another)."""
    rows = Memory.objects.select_for_update() if lock else Memory.objects
    try:
        return rows.get(tenant_id=tenant, id=memory_id)
    except Memory.DoesNotExist:
        raise MemoryNotFound(f"no memory {memory_id!r}", details={"id": memory_id}) from None


def update(memory_id: str, changes: dict[str, Any], *, tenant: str = DEFAULT_TENANT) -> Memory:
    """Change content, type, importance or metadata; new content gets a new embedding."""
    before = get(memory_id, tenant=tenant)
    if "content" in changes:
        limits.check_content(changes["content"])
    if "metadata" in changes:
        limits.check_metadata(changes["metadata"])
    text = changes.get("content", before.content)
    vectors = indexing.embed_texts([text])  # before the transaction: a model is slow
    with transaction.atomic():
        # The row as it is now, locked: a concurrent PATCH's fields are kept, and a row
        # deleted meanwhile stays deleted (a plain save() would insert it again).
        memory = get(memory_id, tenant=tenant, lock=True)
        for name, value in changes.items():
            if name == "content":
                if value != memory.content:
                    memory.set_content(value)  # consolidation looks at it again
            else:
                setattr(memory, name, value)
        memory.save(force_update=True)
        # The index row carries type, importance and metadata too: any change rewrites it.
        tasks = indexing.owe([memory.id])
    # The vector is of `text`; a concurrent PATCH may have changed the content another way.
    indexing.index_or_owe([memory], vectors if memory.content == text else None, tasks)
    return memory


def delete(memory_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
    """Delete a memory from SQL (the acknowledgement), then from the index; the episodes
    that had it as a neighbour get their context rewritten without it, and its parents are
    re-summarized from the children they have left (or removed)."""
    tree.refresh_parents(tenant, indexing.delete_one(memory_id, tenant))
