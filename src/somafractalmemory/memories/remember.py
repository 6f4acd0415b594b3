"""Storing and changing memories: store (dedupe, limits, quota), get, update, delete.

SQL commits first (that is the acknowledgement), with the outbox tasks that owe the index
write; the index is written right after, in the same request (`indexing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction

from somafractalmemory import metrics
from somafractalmemory.conf import get_config
from somafractalmemory.errors import Conflict, KeyContended, MemoryNotFound
from somafractalmemory.memories import indexing, limits, linking, tree, versions
from somafractalmemory.memories.identity import content_hash, new_id, utc
from somafractalmemory.memories.models import (
    DEFAULT_TENANT,
    VALIDITY_FIELDS,
    Memory,
    data_key,
    valid_at,
)
from somafractalmemory.memories.tenancy import default_ttls, ensure_tenant


@dataclass(frozen=True)
class NewMemory:
    content: str
    namespace: str | None = None
    type: str = "episodic"
    importance: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    dedupe: bool = True
    key: str = ""
    """The fact's identity in its namespace: the memory is the key's next version."""
    supersedes: Sequence[str] = ()
    """Memories (of its namespace) this one replaces: their validity ends at its start."""
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    expires_at: datetime | None = None
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class Stored:
    memory: Memory
    deduplicated: bool = False
    """True when the content was already stored in the namespace: this is that memory."""
    near_duplicates: list[tuple[str, float]] = field(default_factory=list)
    """(id, cosine) of other memories of the namespace almost identical in meaning."""
    supersedes: list[str] = field(default_factory=list)
    """Ids of the versions this store closed (a key's previous one, `supersedes`)."""
    possible_conflicts: list[tuple[str, float]] = field(default_factory=list)
    """(id, cosine) of valid semantic memories close to this one but not duplicates."""


KEY_ATTEMPTS = 5
"""Transactions of a store tried before it gives up on a key other stores keep taking."""

Identity = tuple[str, ...]


def _identity(item: NewMemory, namespace: str, digest: str) -> Identity | None:
    """What a repeat of `item` is (None: it is never one): the same content in the
    namespace; for a keyed memory, the same content as its key's current version; a memory
    that supersedes others is always new."""
    if not item.dedupe or item.supersedes:
        return None
    return ("key", namespace, item.key, digest) if item.key else ("content", namespace, digest)


def _held(tenant: str, wanted: Sequence[Identity], now: datetime) -> dict[Identity, Memory]:
    """The valid memories that the `wanted` identities repeat."""
    plain = [w for w in wanted if w[0] == "content"]
    keyed = [w for w in wanted if w[0] == "key"]
    held: dict[Identity, Memory] = {}
    if plain:
        for m in Memory.objects.filter(
            valid_at(now, now),
            tenant_id=tenant,
            namespace__in={w[1] for w in plain},
            content_hash__in={w[2] for w in plain},
        ).order_by("stored_at"):
            held[("content", m.namespace, m.content_hash)] = m
    if keyed:
        for m in Memory.objects.filter(
            valid_at(now, now),
            tenant_id=tenant,
            namespace__in={w[1] for w in keyed},
            key__in={w[2] for w in keyed},
        ):
            held[("key", m.namespace, m.key, m.content_hash)] = m
    return held


def store_many(
    items: Sequence[NewMemory], *, tenant: str = DEFAULT_TENANT, report_near: bool = False
) -> list[Stored]:
    """Store memories (all or none): validate, deduplicate, embed, commit rows, the versions
    they close and the outbox, index. With `report_near`, also report near-duplicates and
    possible conflicts (extra searches per item)."""
    config = get_config()
    limits.check_batch(len(items))
    if not items:
        return []
    now = datetime.now(UTC)
    for item in items:
        limits.check_content(item.content)
        limits.check_metadata(item.metadata)
        versions.check_key(item.key)
    keys = [
        (item.namespace or config.namespace, content_hash(item.content, tenant)) for item in items
    ]
    ttls = default_ttls(tenant, {ns for ns, _ in keys})
    times = [
        versions.resolve(
            item.created_at or now,
            now,
            valid_from=item.valid_from,
            valid_until=item.valid_until,
            expires_at=item.expires_at,
            ttl_seconds=item.ttl_seconds,
            default_ttl=ttls.get(ns),
        )
        for item, (ns, _) in zip(items, keys, strict=True)
    ]
    idents = [_identity(item, *key) for item, key in zip(items, keys, strict=True)]
    existing = _held(tenant, [w for w in idents if w is not None], now)
    fresh = [i for i, w in enumerate(idents) if w is None or w not in existing]
    # Within the batch, a repeated content with dedupe is the first occurrence.
    first: dict[Identity, int] = {}
    for i in fresh:
        if idents[i] is not None:
            first.setdefault(idents[i], i)  # type: ignore[arg-type]
    fresh = [i for i in fresh if idents[i] is None or first[idents[i]] == i]  # type: ignore[index]
    limits.check_quota(tenant, [items[i].content for i in fresh])
    # Embed before writing, so a failing model leaves nothing half-stored.
    vectors = indexing.embed_texts([items[i].content for i in fresh]) if fresh else []
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
            key=items[i].key,
            valid_from=times[i].valid_from,
            valid_until=times[i].valid_until,
            expires_at=times[i].expires_at,
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
    for item, ident in zip(items, idents, strict=True):
        held = existing.get(ident) if ident is not None else None
        if held is not None and item.importance > held.importance:
            held.importance = item.importance
            raised[held.id] = held
    named = {created[i].id: list(items[i].supersedes) for i in fresh if items[i].supersedes}
    # The tenant's current data key, committed before anything is sealed with it.
    data_key(tenant, check=True)
    for attempt in range(KEY_ATTEMPTS):
        try:
            replaced, tasks = _commit(tenant, items, fresh, created, raised, named)
            break
        except IntegrityError as exc:
            # Another store of one of these keys committed its open version first: run
            # again on what it left (the batch's rows were not written).
            if not any(m.key for m in created.values()):
                raise
            if attempt == KEY_ATTEMPTS - 1:
                raise KeyContended(
                    "other stores of this key kept committing first; nothing was stored, try again",
                    details={"keys": sorted({m.key for m in created.values() if m.key})},
                ) from exc
            for i in fresh:
                created[i].valid_until = times[i].valid_until
    else:  # pragma: no cover - the loop breaks or raises
        raise AssertionError("unreachable")
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
    conflicts: linking.Neighbours = {}
    if report_near:
        conflicts = linking.conflicts(
            tenant,
            [
                (i, keys[i][0], v)
                for i, v in zip(fresh, vectors, strict=True)
                if items[i].type == "semantic"
            ],
            skip={
                i: {*replaced.get(created[i].id, []), *(h for h, _ in near.get(i, []))}
                for i in fresh
            },
            now=now,
        )
    results = []
    for i, ident in enumerate(idents):
        if i in created:
            results.append(
                Stored(
                    created[i],
                    near_duplicates=near.get(i, []),
                    supersedes=replaced.get(created[i].id, []),
                    possible_conflicts=conflicts.get(i, []),
                )
            )
        elif ident in existing:
            results.append(Stored(existing[ident], deduplicated=True))
        else:
            results.append(Stored(created[first[ident]], deduplicated=True))  # type: ignore[index]
    return results


def _commit(
    tenant: str,
    items: Sequence[NewMemory],
    fresh: list[int],
    created: dict[int, Memory],
    raised: dict[str, Memory],
    named: dict[str, list[str]],
) -> tuple[dict[str, list[str]], list[Any]]:
    """One transaction of `store_many`: quota under the tenant's lock, the versions the new
    memories close, the rows, their links to those versions, raised importances, the outbox.
    Returns (new id -> replaced ids, outbox tasks)."""
    with transaction.atomic():
        ensure_tenant(tenant)
        # Again, under the tenant's lock: a concurrent store may have committed since.
        limits.check_quota(tenant, [items[i].content for i in fresh], lock=True)
        replaced = versions.close_replaced(tenant, list(created.values()), named)
        Memory.objects.bulk_create(created.values())
        versions.link_replaced(tenant, replaced)
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
    return replaced, tasks


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
    """Change content, type, importance, metadata, validity or expiry (`versions.revise`);
    new content gets a new embedding."""
    if set(changes) <= set(versions.TIMES):
        # Validity and expiry live in SQL alone (each search reads them from the rows): no
        # embedding, no index write.
        with transaction.atomic():
            memory = get(memory_id, tenant=tenant, lock=True)
            versions.revise(memory, changes, datetime.now(UTC))
            memory.save(update_fields=[*VALIDITY_FIELDS, "updated_at"])
        return memory
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
        versions.revise(memory, changes, datetime.now(UTC))
        for name, value in changes.items():
            if name == "content":
                if value != memory.content:
                    memory.set_content(value)  # consolidation looks at it again
            elif name not in versions.TIMES:
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
