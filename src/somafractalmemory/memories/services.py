"""What the service does: remember, recall, get, update, forget, list.

The API layer parses and serialises; everything with a rule in it happens here. SQL commits
first (that is the acknowledgement), the vector write follows; a vector write that fails stays
owed in the outbox (`VectorTask`) and `drain_outbox` pays it later.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from django.db import (
    DatabaseError,
    IntegrityError,
    close_old_connections,
    connections,
    transaction,
)
from django.db.models import F, Q, Sum

from somafractalmemory import backends, metrics
from somafractalmemory.conf import get_config
from somafractalmemory.embedding.cache import embed_query
from somafractalmemory.errors import (
    BatchTooLarge,
    ContentTooLarge,
    IndexUnavailable,
    InvalidCursor,
    MemoryNotFound,
    MetadataTooLarge,
    QuotaExceeded,
    ValidationFailed,
)
from somafractalmemory.memories import links
from somafractalmemory.memories.models import (
    DEFAULT_TENANT,
    Link,
    Memory,
    Tenant,
    VectorTask,
    data_key,
)
from somafractalmemory.retrieval import filters, lexical, ranking
from somafractalmemory.vectors.base import VectorHit, VectorRecord

log = logging.getLogger(__name__)


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
class Hit:
    memory: Memory
    score: float
    components: ranking.Components | None = None
    legs: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Per retrieval leg: (rank, raw score)."""


@dataclass(frozen=True)
class Recall:
    hits: list[Hit]
    latency_ms: float
    embedding_ms: float
    index_ms: float
    """Waiting for the index legs once the query is embedded (the lexical legs start before
    the embedding and run while it is computed)."""
    mode: str = "vector"
    """Which retrieval answered: `vector`, or `lexical` when the vector index failed."""
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    memories: list[Memory]
    next_cursor: str | None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(
            f"time {moment.isoformat()} is outside years 1 to 9999 in UTC"
        ) from None


def _check_content(content: str) -> None:
    config = get_config()
    if not content.strip():
        raise ValidationFailed("content is empty", details={"field": "content"})
    if "\x00" in content:
        raise ValidationFailed("content contains a NUL character", details={"field": "content"})
    size = len(content.encode("utf-8"))
    if size > config.max_content_bytes:
        raise ContentTooLarge(
            f"content is {size} bytes; the limit is {config.max_content_bytes}",
            details={"size": size, "limit": config.max_content_bytes},
        )


MAX_KEY_PATHS_BYTES = 60_000  # Milvus holds at most 64 KiB per JSON field


def _check_metadata(metadata: dict[str, Any]) -> None:
    limit = get_config().max_metadata_bytes
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValidationFailed(
            "metadata holds NaN or Infinity, which JSON cannot", details={"field": "metadata"}
        ) from None
    if "\\u0000" in text:
        raise ValidationFailed("metadata contains a NUL character", details={"field": "metadata"})
    size = len(text.encode("utf-8"))
    paths = len(json.dumps(filters.presence_map(metadata)).encode("utf-8"))
    if size > limit or paths > MAX_KEY_PATHS_BYTES:
        raise MetadataTooLarge(
            f"metadata is {size} bytes as JSON (limit {limit}), its key paths "
            f"{paths} bytes (limit {MAX_KEY_PATHS_BYTES})",
            details={"size": size, "limit": limit, "key_paths": paths},
        )


def lexical_key(tenant: str) -> bytes:
    """The tenant's key for opaque lexical tokens (per-tenant data keys replace it later)."""
    secret = get_config().secret_key.encode()
    return hmac.new(secret, f"sfm-lexical\0{tenant}".encode(), hashlib.sha256).digest()


def vector_record(
    memory: Memory, vector: Any, context: tuple[Any, str] | None = None
) -> VectorRecord:
    """The index row of a memory; `context` is (vector, text) of it with its neighbours."""
    key = lexical_key(memory.tenant_id)
    return VectorRecord(
        id=memory.id,
        embedding_id=memory.embedding_id,
        vector=vector,
        tenant=memory.tenant_id,
        namespace=memory.namespace,
        type=memory.type,
        importance=memory.importance,
        created_at_ms=int(memory.created_at.timestamp() * 1000),
        metadata=memory.metadata,
        lexical=memory.tokens or lexical.keyed_tokens(memory.content, key),
        context_vector=context[0] if context else None,
        context_lexical=lexical.keyed_tokens(context[1], key) if context else "",
    )


def embed_texts(texts: Sequence[str]) -> Any:
    config = get_config()
    embedder = backends.embedder()
    step = config.embedding_batch_size
    with metrics.timed(metrics.EMBEDDING, "store"):
        parts = [embedder.embed(texts[i : i + step]) for i in range(0, len(texts), step)]
    import numpy as np

    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def vectors_of(memories: Sequence[Memory]) -> dict[str, Any]:
    """Index vectors of these memories; the ones the index lacks are embedded now."""
    found: dict[str, Any] = {}
    ids = [m.id for m in memories]
    try:
        for start in range(0, len(ids), 1000):
            found.update(backends.vector_index().vectors(ids[start : start + 1000]))
    except IndexUnavailable:
        found = {}
    missing = [m for m in memories if m.id not in found]
    if missing:
        texts = [m.content for m in missing]
        found.update(zip([m.id for m in missing], embed_texts(texts), strict=True))
    return found


def write_vectors(memories: Sequence[Memory], vectors: Any = None) -> None:
    """Upsert the memories' index rows (embedding them now unless `vectors` are given),
    and refresh the context of the episodes next to them."""
    if not memories:
        return
    if vectors is None:
        vectors = embed_texts([m.content for m in memories])
    known = {m.id: v for m, v in zip(memories, vectors, strict=True)}
    rows = {m.id: m for m in memories}
    contexts: dict[str, tuple[Any, str]] = {}
    for sequence in _episode_sequences(memories):
        contexts.update(_contexts(sequence, set(known), known, rows))
    records = [vector_record(rows[i], known[i], contexts.get(i)) for i in rows]
    with metrics.timed(metrics.INDEX, "upsert"):
        backends.vector_index().upsert(records)


def _episode_sequences(memories: Sequence[Memory]) -> list[list[Memory]]:
    """Per namespace with new episodes: its episodes around them, in order."""
    window = timedelta(seconds=get_config().context_window_seconds)
    if not window:
        return []
    groups: dict[tuple[str, str], list[Memory]] = {}
    for m in memories:
        if m.type == "episodic":
            groups.setdefault((m.tenant_id, m.namespace), []).append(m)
    sequences = []
    for (tenant, namespace), group in groups.items():
        # Two windows: the neighbours' contexts are rewritten too, and need their neighbours.
        low = min(m.created_at for m in group) - 2 * window
        high = max(m.created_at for m in group) + 2 * window
        episodes = Memory.objects.filter(
            tenant_id=tenant, namespace=namespace, type="episodic", created_at__range=(low, high)
        ).order_by("created_at", "stored_at", "id")
        sequences.append(list(episodes))
    return sequences


def _contexts(
    sequence: list[Memory], new: set[str], known: dict[str, Any], rows: dict[str, Memory]
) -> dict[str, tuple[Any, str]]:
    """(vector, text) of each memory whose context the new ones change: the new ones and
    their neighbours. Adds old neighbours to `known` and `rows`, so they are rewritten."""

    window = timedelta(seconds=get_config().context_window_seconds)
    at = {m.id: i for i, m in enumerate(sequence)}

    def neighbours(i: int) -> list[int]:
        return [
            j
            for j in (i - 1, i + 1)
            if 0 <= j < len(sequence)
            and abs(sequence[j].created_at - sequence[i].created_at) <= window
        ]

    touched = {i for m in new if m in at for i in (at[m], *neighbours(at[m]))}
    needed = {j for i in touched for j in (i, *neighbours(i))}
    missing = [sequence[j].id for j in sorted(needed) if sequence[j].id not in known]
    fetched = backends.vector_index().vectors(missing)
    unindexed = [sequence[j] for j in sorted(needed) if sequence[j].id not in known | fetched]
    if unindexed:
        fetched.update(
            zip([m.id for m in unindexed], embed_texts([m.content for m in unindexed]), strict=True)
        )
    known.update(fetched)
    out: dict[str, tuple[Any, str]] = {}
    for i in sorted(touched):
        span = [sequence[j] for j in sorted((i, *neighbours(i)))]
        memory = sequence[i]
        rows.setdefault(memory.id, memory)
        out[memory.id] = context_of(span, known)
    return out


def context_of(span: Sequence[Memory], known: dict[str, Any]) -> tuple[Any, str]:
    """An episode's context from its span (itself and its neighbours, in time order): the
    normalised sum of their vectors, and their texts."""
    import numpy as np

    total = np.sum([known[m.id] for m in span], axis=0)
    return total / (float(np.linalg.norm(total)) or 1.0), "\n".join(m.content for m in span)


def index_or_owe(memories: Sequence[Memory], vectors: Any, tasks: Sequence[VectorTask]) -> None:
    """Write vectors now; on failure the outbox tasks stay for the outbox worker."""
    try:
        write_vectors(memories, vectors)
    except Exception as exc:  # committed and acknowledged: whatever failed, the task stays
        log.warning("vector write owed for %d memories: %s", len(memories), exc)
        return
    settle(tasks)


def settle(tasks: Sequence[VectorTask]) -> None:
    """Remove paid outbox tasks. The change is already committed and acknowledged, so a
    database failure here is only logged: the worker pays the task again (idempotently)."""
    try:
        VectorTask.objects.filter(id__in=[t.id for t in tasks]).delete()
    except DatabaseError as exc:
        log.warning("paid outbox tasks not removed (they will be paid again): %s", exc)


def grace() -> datetime:
    """When an outbox task written by a request becomes due: after the request itself has
    had its chance to pay it, so the worker does not race requests in flight."""
    config = get_config()
    return datetime.now(UTC) + timedelta(seconds=config.milvus_timeout + config.embedding_timeout)


def ensure_tenant(tenant: str) -> None:
    Tenant.objects.get_or_create(id=tenant)


@dataclass(frozen=True)
class Stored:
    memory: Memory
    deduplicated: bool = False
    """True when the content was already stored in the namespace: this is that memory."""
    near_duplicates: list[tuple[str, float]] = field(default_factory=list)
    """(id, cosine) of other memories of the namespace almost identical in meaning."""


def content_hash(content: str, tenant: str) -> str:
    """Identity of a content within a tenant (for deduplication), keyed: the database holds
    no plain hash that would let a reader confirm a guessed content."""
    return hmac.new(lexical_key(tenant), content.strip().encode("utf-8"), "sha256").hexdigest()


def tokens_of(content: str, tenant: str) -> str:
    """The keyed lexical tokens of a content (the SQL full-text index holds these)."""
    return lexical.keyed_tokens(content, lexical_key(tenant))


def store_many(
    items: Sequence[NewMemory], *, tenant: str = DEFAULT_TENANT, report_near: bool = False
) -> list[Stored]:
    """Store memories (all or none): validate, deduplicate, embed, commit rows and outbox,
    index. With `report_near`, also report near-duplicates (one extra search per item)."""
    config = get_config()
    if len(items) > config.max_batch:
        raise BatchTooLarge(
            f"{len(items)} memories in one batch; the limit is {config.max_batch}",
            details={"size": len(items), "limit": config.max_batch},
        )
    if not items:
        return []
    for item in items:
        _check_content(item.content)
        _check_metadata(item.metadata)
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
    fresh = [i for i, (item, key) in enumerate(zip(items, keys, strict=True))
             if not (item.dedupe and key in existing)]  # fmt: skip
    # Within the batch, a repeated content with dedupe is the first occurrence.
    first: dict[tuple[str, str], int] = {}
    for i in fresh:
        first.setdefault(keys[i], i)
    fresh = [i for i in fresh if not items[i].dedupe or first[keys[i]] == i]
    _check_quota(tenant, [items[i].content for i in fresh])
    # Embed before writing, so a failing model leaves nothing half-stored.
    vectors = embed_texts([items[i].content for i in fresh]) if fresh else []
    now = datetime.now(UTC)
    created = {
        i: Memory(
            id=new_id("mem"),
            tenant_id=tenant,
            namespace=keys[i][0],
            type=items[i].type,
            content=items[i].content,
            metadata=items[i].metadata,
            importance=items[i].importance,
            embedding_id=new_id("vec"),
            content_hash=keys[i][1],
            tokens=tokens_of(items[i].content, tenant),
            size=len(items[i].content.encode("utf-8")),
            created_at=_utc(items[i].created_at or now),
            # Distinct arrival times keep the batch's order among equal event times.
            stored_at=now + timedelta(microseconds=position),
        )
        for position, i in enumerate(fresh)
    }
    near: dict[int, list[tuple[str, float]]] = {}
    similar: dict[int, list[tuple[str, float]]] = {}
    if report_near:
        near, similar = _neighbours(
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
        Memory.objects.bulk_create(created.values())
        for memory in raised.values():
            memory.save(update_fields=["importance", "updated_at"])
        changed = [*created.values(), *raised.values()]
        tasks = VectorTask.objects.bulk_create(
            VectorTask(memory_id=m.id, action=VectorTask.Action.UPSERT, next_attempt_at=grace())
            for m in changed
        )
    metrics.STORED.inc(len(created))
    if created:
        index_or_owe(list(created.values()), vectors, tasks[: len(created)])
        if config.auto_link:
            _auto_link(tenant, created, similar, vectors, fresh)
            if not report_near:  # batches: the index's neighbours are linked off the request
                rows = [
                    (created[i].id, created[i].namespace, v)
                    for i, v in zip(fresh, vectors, strict=True)
                ]
                _LINK_POOL.submit(_link_from_index, tenant, rows)
    if raised:
        index_or_owe(list(raised.values()), None, tasks[len(created) :])
    results = []
    for i, (item, key) in enumerate(zip(items, keys, strict=True)):
        if i in created:
            results.append(Stored(created[i], near_duplicates=near.get(i, [])))
        elif key in existing and item.dedupe:
            results.append(Stored(existing[key], deduplicated=True))
        else:
            results.append(Stored(created[first[key]], deduplicated=True))
    return results


Neighbours = dict[int, list[tuple[str, float]]]


def _check_quota(tenant: str, contents: Sequence[str]) -> None:
    """Refuse (403 quota_exceeded) a store that would take the tenant past its limits."""
    limits = Tenant.objects.filter(id=tenant).values("max_memories", "max_bytes").first()
    if not limits or not contents:
        return
    rows = Memory.objects.filter(tenant_id=tenant)
    if limits["max_memories"] is not None:
        held = rows.count()
        if held + len(contents) > limits["max_memories"]:
            raise QuotaExceeded(
                f"tenant {tenant!r} may hold {limits['max_memories']} memories; it holds {held}",
                details={"limit": limits["max_memories"], "used": held, "adding": len(contents)},
            )
    if limits["max_bytes"] is not None:
        used = int(rows.aggregate(n=Sum("size"))["n"] or 0)
        adding = sum(len(c.encode("utf-8")) for c in contents)
        if used + adding > limits["max_bytes"]:
            raise QuotaExceeded(
                f"tenant {tenant!r} may store {limits['max_bytes']} bytes of content; "
                f"it stores {used}",
                details={"limit": limits["max_bytes"], "used": used, "adding": adding},
            )


def _neighbours(
    tenant: str, candidates: list[tuple[int, str, Any]]
) -> tuple[Neighbours, Neighbours]:
    """(near duplicates, similar) already in the index for each new memory: (id, cosine)."""
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
            for (i, _), hits in zip(rows, found, strict=True):
                near[i] = [(h.id, round(h.score, 4)) for h in hits[:3]
                           if h.score >= config.near_duplicate_threshold]  # fmt: skip
                similar[i] = [(h.id, h.score) for h in hits if h.score >= config.link_similarity]
    except IndexUnavailable as exc:
        log.warning("neighbour search skipped (no near duplicates, no similar links): %s", exc)
    return near, similar


def _auto_link(
    tenant: str, created: dict[int, Memory], similar: Neighbours, vectors: Any, order: list[int]
) -> None:
    """`similar` links to the closest memories (in the index or in this batch) and `follows`
    links from each new episode to the episode before it. Best effort: links are derived,
    the memories are stored whatever happens here."""
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


_LINK_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfm-link")


def _link_from_index(tenant: str, rows: list[tuple[str, str, Any]]) -> None:
    """`similar` links from a stored batch to its neighbours in the index (run after the
    batch is acknowledged). Best effort, like every derived link."""
    try:
        _, similar = _neighbours(tenant, [(n, ns, v) for n, (_, ns, v) in enumerate(rows)])
        most = get_config().link_max
        edges = [e for n, (memory_id, _, _) in enumerate(rows)
                 for e in _best_similar(memory_id, dict(similar.get(n, [])), most)]  # fmt: skip
        links.add_many(tenant, edges)
    except Exception as exc:  # e.g. a row deleted meanwhile; the memories are stored anyway
        log.warning("similar links from the index skipped for %d memories: %s", len(rows), exc)
    finally:
        connections.close_all()


def _follows(episodes: list[Memory]) -> list[links.Edge]:
    """Each new episode -> the episode just before it in its namespace (event time, then
    arrival). One range query per namespace."""
    groups: dict[tuple[str, str], list[Memory]] = {}
    for m in episodes:
        groups.setdefault((m.tenant_id, m.namespace), []).append(m)
    edges = []
    for (tenant, namespace), group in groups.items():
        low, high = min(m.created_at for m in group), max(m.created_at for m in group)
        scope = Memory.objects.filter(tenant_id=tenant, namespace=namespace, type="episodic")
        before = scope.filter(created_at__lt=low).order_by("-created_at", "-stored_at", "-id")
        around = scope.filter(created_at__range=(low, high)).order_by(
            "created_at", "stored_at", "id"
        )
        sequence = [*before.values_list("id", flat=True)[:1], *around.values_list("id", flat=True)]
        new = {m.id for m in group}
        edges += [
            links.Edge(current, previous, Link.FOLLOWS, 1.0)
            for previous, current in pairwise(sequence)
            if current in new
        ]
    return edges


def remember_many(items: Sequence[NewMemory], *, tenant: str = DEFAULT_TENANT) -> list[Memory]:
    """Store memories; the stored (or, for repeats, the existing) memory of each item."""
    return [stored.memory for stored in store_many(items, tenant=tenant)]


def remember(item: NewMemory, *, tenant: str = DEFAULT_TENANT) -> Memory:
    return remember_many([item], tenant=tenant)[0]


def get(memory_id: str, *, tenant: str = DEFAULT_TENANT, recall: bool = False) -> Memory:
    """One memory; `recall` counts the read as a recall (reinforcement)."""
    try:
        memory = Memory.objects.get(tenant_id=tenant, id=memory_id)
    except Memory.DoesNotExist:
        raise MemoryNotFound(f"no memory {memory_id!r}", details={"id": memory_id}) from None
    if recall:
        reinforce([memory.id])
    return memory


def update(memory_id: str, changes: dict[str, Any], *, tenant: str = DEFAULT_TENANT) -> Memory:
    """Change content, type, importance or metadata; new content gets a new embedding."""
    memory = get(memory_id, tenant=tenant)
    if "content" in changes:
        _check_content(changes["content"])
    if "metadata" in changes:
        _check_metadata(changes["metadata"])
    new_content = "content" in changes and changes["content"] != memory.content
    for name, value in changes.items():
        setattr(memory, name, value)
    if new_content:
        memory.embedding_id = new_id("vec")
        memory.content_hash = content_hash(memory.content, memory.tenant_id)
        memory.tokens = tokens_of(memory.content, memory.tenant_id)
        memory.size = len(memory.content.encode("utf-8"))
        memory.considered_at = None  # consolidation looks at it again
    # The index row carries type, importance and metadata too, so any change rewrites it.
    vectors = embed_texts([memory.content])
    with transaction.atomic():
        memory.save()
        task = VectorTask.objects.create(
            memory_id=memory.id, action=VectorTask.Action.UPSERT, next_attempt_at=grace()
        )
    index_or_owe([memory], vectors, [task])
    return memory


DELETE_ATTEMPTS = 5


def _delete_row(memory_id: str, tenant: str) -> tuple[Memory, list[str], VectorTask]:
    with transaction.atomic():
        gone = Memory.objects.filter(tenant_id=tenant, id=memory_id).first()
        if gone is None:
            raise MemoryNotFound(f"no memory {memory_id!r}", details={"id": memory_id})
        parents = links.parent_ids([memory_id]).get(memory_id, [])
        Memory.objects.filter(pk=gone.pk).delete()  # keeps `gone` whole for below; links go
        task = VectorTask.objects.create(
            memory_id=memory_id, action=VectorTask.Action.DELETE, next_attempt_at=grace()
        )
    return gone, parents, task


def forget(memory_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
    """Delete a memory from SQL (the acknowledgement), then from the index; the episodes
    that had it as a neighbour get their context rewritten without it, and its parents are
    re-summarized from the children they have left (or removed)."""
    refresh_parents(tenant, _forget(memory_id, tenant))


def _forget(memory_id: str, tenant: str) -> list[str]:
    """`forget` but for the parents, whose ids it returns."""
    for attempt in range(DELETE_ATTEMPTS):
        try:
            gone, parents, task = _delete_row(memory_id, tenant)
            break
        except IntegrityError:
            # A link to it was committed between Django collecting its links and deleting
            # the row (auto-linking of a concurrent store): collect again.
            if attempt == DELETE_ATTEMPTS - 1:
                raise
    try:
        backends.vector_index().delete([memory_id])
        settle([task])
        rewrite_neighbours([gone])
    except Exception as exc:  # committed and acknowledged: the task stays
        log.warning("vector delete owed for %s: %s", memory_id, exc)
    return parents


# -- the hierarchy: consolidated parents -----------------------------------------------------


def parent_type(level: int) -> str:
    return "semantic" if level == 1 else "summary"


def sources_hash(children: Sequence[Memory]) -> str:
    """Identity of what a parent summarizes: its children's ids and contents."""
    return sources_hash_of([(c.id, c.content_hash) for c in children])


def sources_hash_of(children: Iterable[tuple[str, str]]) -> str:
    """`sources_hash` from (id, content hash) pairs."""
    parts = sorted(f"{i}:{h}" for i, h in children)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _common_metadata(children: Sequence[Memory]) -> dict[str, Any]:
    """The metadata every child shares (same key, same value): filters keep finding parents."""
    first, *rest = [c.metadata for c in children]
    return {k: v for k, v in first.items() if all(k in m and m[k] == v for m in rest)}


def _summarized(parent: Memory, children: Sequence[Memory]) -> None:
    """Set a parent's content and derived fields from its children (time-ordered)."""
    children = sorted(children, key=lambda c: (c.created_at, c.stored_at, c.id))
    text = backends.summarizer().summarize(
        [c.content for c in children], max_bytes=get_config().max_content_bytes
    )
    if not text.strip():
        text = children[0].content
    if text != parent.content:
        parent.content = text
        parent.content_hash = content_hash(text, parent.tenant_id)
        parent.tokens = tokens_of(text, parent.tenant_id)
        parent.size = len(text.encode("utf-8"))
        parent.embedding_id = new_id("vec")
        parent.considered_at = None  # a changed parent is grouped again one level up
    parent.importance = max(c.importance for c in children)
    parent.created_at = min(c.created_at for c in children)
    parent.span_end = max(c.span_end or c.created_at for c in children)
    parent.metadata = _common_metadata(children)
    parent.sources_hash = sources_hash(children)


def save_parents(
    tenant: str, made: Sequence[tuple[Memory | None, str, int, Sequence[Memory]]]
) -> list[Memory]:
    """Create or refresh consolidated parents: (existing parent or None, namespace, level,
    children). One transaction with their links and outbox rows, then the index."""
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
    vectors = embed_texts([p.content for p in parents])
    with transaction.atomic():
        # A parent deleted meanwhile stays deleted (a plain save() would insert it again).
        held_ids = [p.id for p, (held, *_) in zip(parents, made, strict=True) if held]
        alive = set(Memory.objects.select_for_update().filter(id__in=held_ids).values_list(
            "id", flat=True))  # fmt: skip
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
        tasks = VectorTask.objects.bulk_create(
            VectorTask(
                memory_id=parents[n].id, action=VectorTask.Action.UPSERT, next_attempt_at=grace()
            )
            for n in keep
        )
    saved = [parents[n] for n in keep]
    index_or_owe(saved, vectors[keep], tasks)
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
            above += _forget(parent_id, tenant)
            done.removed += 1
    stale = [
        (p, left[p.id]) for p in alive if left[p.id] and p.sources_hash != sources_hash(left[p.id])
    ]
    if stale:
        save_parents(tenant, [(p, p.namespace, p.level, c) for p, c in stale])
        done.resummarized += len(stale)
        above += [g for gs in links.parent_ids([p.id for p, _ in stale]).values() for g in gs]
    return refresh_parents(tenant, above, done)


Key = tuple[datetime, datetime, str]  # (created_at, stored_at, id): an episode's place


def spans_next_to(
    order: Sequence[Key], gone: Sequence[Key], window: timedelta
) -> dict[str, list[str]]:
    """For each survivor in `order` that stood next to a `gone` episode (both sorted): the
    ids of its new span (itself with its neighbours within `window`), in order."""

    def near(i: int, j: int) -> bool:
        return 0 <= j < len(order) and abs(order[j][0] - order[i][0]) <= window

    spans = {}
    for key in gone:
        at = bisect.bisect_left(order, key)
        for i in (at - 1, at):  # the survivors just before and just after
            if near(i, i) and abs(order[i][0] - key[0]) <= window:
                spans[order[i][2]] = [order[j][2] for j in (i - 1, i, i + 1) if near(i, j)]
    return spans


def rewrite_neighbours(gone: Sequence[Memory]) -> int:
    """Rewrite the context of the episodes that stood next to deleted ones (within the
    context window): their context vector and tokens held the deleted text. Only those
    episodes change (their new neighbours' contexts do not). Returns how many."""

    window = timedelta(seconds=get_config().context_window_seconds)
    groups: dict[tuple[str, str], list[Key]] = {}
    for m in gone:
        if m.type == "episodic" and window:
            key = (m.created_at, m.stored_at, m.id)
            groups.setdefault((m.tenant_id, m.namespace), []).append(key)
    spans: dict[str, list[str]] = {}  # episode to rewrite -> its span, in time order
    for (tenant, namespace), keys in groups.items():
        keys.sort()
        order = list(
            Memory.objects.filter(
                tenant_id=tenant,
                namespace=namespace,
                type="episodic",
                created_at__range=(keys[0][0] - 2 * window, keys[-1][0] + 2 * window),
            )
            .order_by("created_at", "stored_at", "id")
            .values_list("created_at", "stored_at", "id")
        )
        spans.update(spans_next_to(order, keys, window))
    ids = list(spans)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        rows = Memory.objects.in_bulk({j for i in chunk for j in spans[i]})
        known = vectors_of(list(rows.values()))
        records = []
        for memory_id in chunk:
            memory = rows.get(memory_id)
            span = [rows[j] for j in spans[memory_id] if j in rows]
            if memory is None or memory.archived_at is not None:
                continue
            records.append(vector_record(memory, known[memory_id], context_of(span, known)))
        backends.vector_index().upsert(records)
    return len(ids)


MODES = ("hybrid", "vector", "lexical")
_LEG_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sfm-leg")


@dataclass(frozen=True)
class Query:
    """What a search asks for, beyond the text."""

    namespace: str | None = None
    top_k: int = 10
    mode: str = "hybrid"
    filters: dict[str, Any] | None = None
    types: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    min_score: float | None = None
    levels: tuple[int, ...] = ()
    """Hierarchy levels (0: stored by clients, 1 and up: made by consolidation). Empty: level
    0 only, unless `types` is given (then every level of those types)."""

    @property
    def allowed_levels(self) -> tuple[int, ...]:
        """Levels a hit may have; empty: any."""
        return self.levels or (() if self.types else (0,))

    scoring: ranking.Scoring = field(default_factory=ranking.Scoring)
    reinforce: bool = True
    """Count the hits as recalled (strength, recency). The dashboard's reads do not."""


def _where(query: Query) -> filters.Node | None:
    parts: list[dict[str, Any]] = [query.filters] if query.filters else []
    if query.types:
        parts.append({"type": {"$in": list(query.types)}})
    if query.levels:  # the index knows types; _score checks levels above 2 on the rows
        types = sorted({"episodic" if v == 0 else parent_type(v) for v in query.levels})
        parts.append({"type": {"$in": types}})
    if query.created_after:
        parts.append({"created_at": {"$gte": _utc(query.created_after).isoformat()}})
    if query.created_before:
        parts.append({"created_at": {"$lt": _utc(query.created_before).isoformat()}})
    return filters.parse({"$and": parts} if parts else None)


def candidate_pool(top_k: int) -> int:
    """How many candidates each retrieval leg brings to fusion."""
    return min(max(4 * top_k, 40), 200)


def recall(text: str, query: Query | None = None, *, tenant: str = DEFAULT_TENANT) -> Recall:
    """The memories that best answer `text`: retrieval legs fused, then scored (ranking.py)."""
    query = query or Query()
    started = time.perf_counter()
    if query.mode not in MODES:
        raise ValidationFailed(f"mode must be one of {list(MODES)}", details={"mode": query.mode})
    where = _where(query)
    if not text.strip():
        raise ValidationFailed("query is empty", details={"field": "query"})
    pool = candidate_pool(query.top_k)
    mode, warnings = query.mode, []
    legs: dict[str, list[VectorHit]] = {}
    futures: dict[str, Any] = {}
    failure: IndexUnavailable | None = None

    def leg(search: Any, probe: Any, context: bool) -> Any:
        return _LEG_POOL.submit(
            contextvars.copy_context().run, search, probe, tenant=tenant,
            namespace=query.namespace, where=where, top_k=pool, context=context,
        )  # fmt: skip

    # The legs are independent index calls, run at once; the lexical ones need no vector,
    # so they start before the query is embedded and run while it is.
    try:
        index = backends.vector_index()
        if query.mode != "vector":
            tokens = " ".join(
                dict.fromkeys(lexical.keyed_tokens(text, lexical_key(tenant)).split())
            )
            futures["lexical"] = leg(index.search_lexical, tokens, False)
            futures["context_lexical"] = leg(index.search_lexical, tokens, True)
    except IndexUnavailable as exc:
        failure = exc
    embedding_started = time.perf_counter()
    vector = (
        embed_query(backends.embedder(), text, tenant=tenant) if query.mode != "lexical" else None
    )
    embedded = time.perf_counter()
    try:
        if failure is not None:
            raise failure
        if vector is not None:
            futures["vector"] = leg(index.search, vector, False)
            futures["context_vector"] = leg(index.search, vector, True)
        order = ("vector", "context_vector", "lexical", "context_lexical")
        legs = {name: futures[name].result() for name in order if name in futures}
    except IndexUnavailable as exc:
        # SQL still knows every memory: answer from its full-text index, and say so.
        log.warning("search falls back to SQL full text: %s", exc.message)
        mode = "lexical"
        warnings.append(f"{exc.code}: the vector index failed; results are lexical only")
        legs = {"lexical": _sql_lexical(tenant, query, where, text, pool)}
    searched = time.perf_counter()
    hits = _score(legs, query, tenant)
    if query.reinforce:
        reinforce(h.memory.id for h in hits)
    done = time.perf_counter()
    metrics.SEARCHES.labels(mode).inc()
    if vector is not None:
        metrics.EMBEDDING.labels("query").observe(embedded - embedding_started)
    metrics.INDEX.labels("search").observe(searched - embedded)
    return Recall(
        hits=hits,
        latency_ms=(done - started) * 1000,
        embedding_ms=(embedded - embedding_started) * 1000,
        index_ms=(searched - embedded) * 1000,
        mode=mode,
        warnings=warnings,
    )


def _relevance(legs: dict[str, list[VectorHit]], fusion: ranking.Fusion) -> dict[str, float]:
    legs = {name: hits for name, hits in legs.items() if hits}
    if not legs:
        return {}
    if len(legs) > 1:
        return ranking.rrf(
            [[h.id for h in hits] for hits in legs.values()],
            k=fusion.k,
            weights=[getattr(fusion, name) for name in legs],
        )
    ((name, hits),) = legs.items()
    if name == "vector":
        return {h.id: max(0.0, min(1.0, h.score)) for h in hits}
    best = max((h.score for h in hits), default=0.0)
    return {h.id: h.score / best for h in hits} if best > 0 else {}


# What ranking reads of a candidate: no sealed field, so nothing is decrypted for the
# candidates that do not make the top k.
RANKING_FIELDS = ("id", "tenant_id", "type", "importance", "level", "created_at",
                  "last_accessed_at", "archived_at")  # fmt: skip


def _score(legs: dict[str, list[VectorHit]], query: Query, tenant: str) -> list[Hit]:
    relevance = _relevance(legs, query.scoring.fusion)
    rows = Memory.objects.only(*RANKING_FIELDS).in_bulk(list(relevance))
    # A hit without its row was deleted (or archived) after the index answered: the row
    # decides.
    rows = {
        i: m
        for i, m in rows.items()
        if m.tenant_id == tenant
        and m.archived_at is None
        and (not query.allowed_levels or m.level in query.allowed_levels)
    }
    relevance = {i: r for i, r in relevance.items() if i in rows}
    now = datetime.now(UTC)
    ranked = ranking.rank(
        relevance,
        ages={i: (now - m.last_seen).total_seconds() for i, m in rows.items()},
        types={i: m.type for i, m in rows.items()},
        importance={i: m.importance for i, m in rows.items()},
        scoring=query.scoring,
    )
    positions = {
        name: {h.id: (n + 1, h.score) for n, h in enumerate(hits)} for name, hits in legs.items()
    }
    top = [(i, parts) for i, parts in ranked
           if query.min_score is None or parts.score >= query.min_score][: query.top_k]  # fmt: skip
    # One query by primary key alone: with the tenant in the WHERE clause SQLite walks a
    # tenant index instead (every row of a one-tenant store: 150 ms at 100,000 memories).
    full = Memory.objects.in_bulk([i for i, _ in top])
    return [
        Hit(full[i], parts.score, parts, {n: pos[i] for n, pos in positions.items() if i in pos})
        for i, parts in top
        # Deleted or archived between the two reads: the row decides.
        if i in full and full[i].tenant_id == tenant and full[i].archived_at is None
    ]


SQL_FILTER_POOL = 2000


def _sql_lexical(
    tenant: str, query: Query, where: filters.Node | None, text: str, pool: int
) -> list[VectorHit]:
    """The fallback: full text over the keyed tokens in SQL. Metadata is sealed in SQL, so a
    filter is checked on the decrypted rows of up to SQL_FILTER_POOL best matches."""
    scope = Memory.objects.filter(tenant_id=tenant, archived_at__isnull=True)
    if query.namespace is not None:
        scope = scope.filter(namespace=query.namespace)
    words = list(dict.fromkeys(tokens_of(text, tenant).split()))
    found = lexical.search(scope, words, pool if where is None else SQL_FILTER_POOL)
    if where is not None:
        rows = Memory.objects.in_bulk([i for i, _ in found])
        found = [
            (i, s) for i, s in found if i in rows and filters.matches(where, facts_of(rows[i]))
        ]
    return [VectorHit(i, s) for i, s in found[:pool]]


def facts_of(memory: Memory) -> filters.Facts:
    return filters.Facts(
        columns={
            "id": memory.id,
            "type": memory.type,
            "importance": memory.importance,
            "created_at": int(memory.created_at.timestamp() * 1000),
        },
        metadata=memory.metadata,
    )


def _encode_cursor(memory: Memory) -> str:
    raw = json.dumps([memory.created_at.isoformat(), memory.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, memory_id = json.loads(raw)
        return datetime.fromisoformat(created), str(memory_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc


def list_memories(
    *,
    tenant: str = DEFAULT_TENANT,
    namespace: str | None = None,
    types: Iterable[str] = (),
    limit: int = 50,
    cursor: str | None = None,
    archived: bool = False,
) -> Page:
    """Memories newest first (by event time), a page at a time; `archived`: only those
    that forgetting archived (else only the others)."""
    query = Memory.objects.filter(tenant_id=tenant, archived_at__isnull=not archived)
    if namespace is not None:
        query = query.filter(namespace=namespace)
    types = list(types)
    if types:
        query = query.filter(type__in=types)
    if cursor:
        created, memory_id = _decode_cursor(cursor)
        query = query.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=memory_id))
    rows = list(query.order_by("-created_at", "-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, _encode_cursor(rows[-1]) if more and rows else None)


MAX_BACKOFF_SECONDS = 300.0


def backoff_seconds(attempts: int) -> float:
    """Delay before retry number `attempts` (1, 2, 4, ... capped at five minutes)."""
    return float(min(MAX_BACKOFF_SECONDS, 2 ** max(0, attempts - 1)))


def drain_outbox(
    *, limit: int = 1000, due_only: bool = True, owed_before: datetime | None = None
) -> int:
    """Pay owed vector writes that are due; returns how many tasks were settled.

    Upserts re-embed the row as it is now (so the newest content wins); a task whose memory
    is gone becomes a delete. Failures push the tasks back with exponential backoff.
    `owed_before`: tasks written before then and never tried are due at once (a worker
    starting after a crash pays what the dead process's requests left, without the grace
    that keeps it from racing live requests).
    """
    now = datetime.now(UTC)
    due = Q(next_attempt_at__lte=now)
    if owed_before is not None:
        due |= Q(created_at__lt=owed_before, attempts=0)
    owed = VectorTask.objects.filter(due) if due_only else VectorTask.objects
    tasks = list(owed.order_by("id")[:limit])
    if not tasks:
        return 0
    # Archived memories are out of the index like deleted ones.
    rows = Memory.objects.filter(archived_at__isnull=True).in_bulk({t.memory_id for t in tasks})
    present = [rows[mid] for mid in dict.fromkeys(t.memory_id for t in tasks) if mid in rows]
    gone = sorted({t.memory_id for t in tasks} - set(rows))
    failed: dict[str, str] = {}
    try:
        if present:
            write_vectors(present)
        backends.vector_index().delete(gone)
    except Exception as batch_error:
        log.warning("outbox: batch of %d failed (%s); paying one by one", len(tasks), batch_error)
        # One bad memory must not block the others: find which ones fail.
        for memory in present:
            try:
                write_vectors([memory])
            except Exception as exc:
                failed[memory.id] = str(exc)
        for memory_id in gone:
            try:
                backends.vector_index().delete([memory_id])
            except Exception as exc:
                failed[memory_id] = str(exc)
    retry = [t for t in tasks if t.memory_id in failed]
    failed_at = datetime.now(UTC)  # backoff counts from the failure, not the drain's start
    for task in retry:
        task.attempts += 1
        task.last_error = failed[task.memory_id][:500]
        task.next_attempt_at = failed_at + timedelta(seconds=backoff_seconds(task.attempts))
    if retry:
        VectorTask.objects.bulk_update(retry, ["attempts", "last_error", "next_attempt_at"])
        log.warning("outbox: %d vector writes still owed", len(retry))
    paid = [t.id for t in tasks if t.memory_id not in failed]
    VectorTask.objects.filter(id__in=paid).delete()
    return len(paid)


# -- reinforcement: recalled memories gain access count, recency and strength ------------

STRENGTH_STEP = 0.5
MAX_PENDING = 100_000


class _Pending:
    """Recalls counted in memory and written in batches, off the request's latency path."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str]) -> None:
        with self._lock:
            if len(self._counts) < MAX_PENDING:
                self._counts.update(ids)

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts


_pending = _Pending()


def reinforce(ids: Iterable[str]) -> None:
    """Note that these memories were recalled (written by `flush_reinforcements`)."""
    _pending.add(ids)


def flush_reinforcements() -> int:
    """Write the noted recalls: one UPDATE per distinct count. Returns memories touched."""
    counts = _pending.take()
    by_count: dict[int, list[str]] = {}
    for memory_id, times in counts.items():
        by_count.setdefault(times, []).append(memory_id)
    now = datetime.now(UTC)
    for times, ids in by_count.items():
        Memory.objects.filter(id__in=ids).update(
            access_count=F("access_count") + times,
            last_accessed_at=now,
            strength=F("strength") + STRENGTH_STEP * times,
        )
    return len(counts)


def outbox_depth() -> int:
    return VectorTask.objects.count()


def run_outbox_worker(stop: threading.Event, *, interval: float = 1.0) -> None:
    """Drain the outbox until `stop` is set; sleeps `interval` when there is nothing due.
    Tasks left by a previous process are due at once."""
    started = datetime.now(UTC)
    while not stop.is_set():
        try:
            flush_reinforcements()
            paid = drain_outbox(owed_before=started)
        except Exception as exc:  # the worker must outlive any one failure
            log.warning("outbox worker: %s", exc)
            paid = 0
        finally:
            close_old_connections()
        if not paid:
            stop.wait(interval)


# -- namespaces --------------------------------------------------------------------------


@dataclass(frozen=True)
class NamespaceStats:
    namespace: str
    memories: int
    archived: int
    by_type: dict[str, int]
    by_level: dict[int, int]
    first: datetime | None
    last: datetime | None


def namespaces(*, tenant: str = DEFAULT_TENANT, only: str | None = None) -> list[NamespaceStats]:
    """The tenant's namespaces with counts by type and level (archived counted apart)."""
    from django.db.models import Count, Max, Min

    rows = Memory.objects.filter(tenant_id=tenant)
    if only is not None:
        rows = rows.filter(namespace=only)
    grouped = rows.values("namespace", "type", "level", archived=Q(archived_at__isnull=False))
    stats: dict[str, dict[str, Any]] = {}
    for row in grouped.annotate(n=Count("id"), first=Min("created_at"), last=Max("created_at")):
        held = stats.setdefault(row["namespace"], {
            "memories": 0, "archived": 0, "by_type": Counter(), "by_level": Counter(),
            "first": row["first"], "last": row["last"],
        })  # fmt: skip
        if row["archived"]:
            held["archived"] += row["n"]
            continue
        held["memories"] += row["n"]
        held["by_type"][row["type"]] += row["n"]
        held["by_level"][row["level"]] += row["n"]
        held["first"] = min(held["first"], row["first"])
        held["last"] = max(held["last"], row["last"])
    return [
        NamespaceStats(
            name,
            s["memories"],
            s["archived"],
            dict(s["by_type"]),
            dict(s["by_level"]),
            s["first"],
            s["last"],
        )
        for name, s in sorted(stats.items())
    ]
