"""SQL -> the vector index: index records, episode contexts, and the outbox.

SQL commits first (that is the acknowledgement); the index write follows in the same request.
Every change owes its index write to the outbox in the transaction that makes it (`owe`); the
request pays it right after the commit (`pay`), or `drain_outbox` pays it later. Deleting a
row (`delete_one`) is here too: what it must undo lives in the index.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Q, QuerySet

from somafractalmemory import backends, metrics
from somafractalmemory.conf import get_config
from somafractalmemory.errors import EmbeddingModelChanged, IndexUnavailable, MemoryNotFound
from somafractalmemory.memories import links
from somafractalmemory.memories.identity import lexical_key
from somafractalmemory.memories.models import (
    EPISODE_ORDER,
    Memory,
    Setting,
    VectorTask,
    episodes_of,
    retry_integrity,
)
from somafractalmemory.retrieval import lexical
from somafractalmemory.vectors.base import VectorRecord

log = logging.getLogger(__name__)

Place = tuple[datetime, datetime, str]  # Memory.place: (created_at, stored_at, id)


MODEL_KEY = "embedding_model"


def check_model() -> str:
    """The configured embedding model, which must be the one whose vectors the index holds.

    The data records its model the first time it is checked (a new data directory, or one
    from before the record: it was embedded by the configured model, the only one that was
    read). A different configured model would search the memories' vectors with
    incomparable queries, or an empty collection: refused until `sfm reindex --reembed`.
    """
    name = backends.embedder().name
    recorded, _ = Setting.objects.get_or_create(key=MODEL_KEY, defaults={"value": name})
    if recorded.value != name:
        raise EmbeddingModelChanged(
            f"the stored memories were embedded by {recorded.value!r}, but embedding_model is "
            f"{name!r}: run `sfm reindex --reembed` to embed them all again with {name!r}, or "
            f"set embedding_model back to {recorded.value!r}",
            details={"recorded": recorded.value, "configured": name},
        )
    return name


def adopt_model() -> None:
    """Record the configured model as the index's (after a re-embed by it)."""
    name = backends.embedder().name
    Setting.objects.update_or_create(key=MODEL_KEY, defaults={"value": name})


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


REWRITES = 3
"""How often a write whose rows changed meanwhile is redone before it is owed instead."""


def write_vectors(memories: Sequence[Memory], vectors: Any = None, *, rewrites: int = 0) -> None:
    """Upsert the memories' index rows (embedding them now unless `vectors` are given),
    and refresh the context of the episodes next to them.

    Index writes are not ordered with the commits they mirror: a row may be deleted,
    archived or changed between being read and being written. So the write is checked
    against SQL after it lands (`_check_written`): the row decides."""
    if not memories:
        return
    if vectors is None:
        vectors = embed_texts([m.content for m in memories])
    known = {m.id: v for m, v in zip(memories, vectors, strict=True)}
    rows = {m.id: m for m in memories}
    given = set(rows)  # `rows` gains the neighbours whose context these change
    contexts: dict[str, tuple[Any, str]] = {}
    spans: dict[str, list[str]] = {}
    for sequence in _episode_sequences(memories):
        contexts.update(_contexts(sequence, given, known, rows, spans))
    primary = [vector_record(m, known[m.id], contexts.get(m.id)) for m in memories]
    around = [vector_record(rows[i], known[i], contexts[i]) for i in rows if i not in given]
    _upsert(rows, primary)
    if around:  # a neighbour that cannot be written must not keep the new rows out
        try:
            _upsert(rows, around)
        except Exception as exc:
            log.warning("context refresh of %d neighbours owed: %s", len(around), exc)
            _owe_now([r.id for r in around])
    _check_written(rows, spans, rewrites)


def sql_lexical() -> bool:
    """Whether SQL full text serves the lexical legs: the settings say so, or the index has no
    BM25 (a Milvus server before 2.5). Then each vector write also writes the memory's
    `context_tokens` (a raised IndexUnavailable means the index cannot say)."""
    return get_config().lexical_engine == "sql" or not backends.vector_index().lexical


def _upsert(rows: dict[str, Memory], records: Sequence[VectorRecord]) -> None:
    """Write `records` (of `rows`) to the index, and their context tokens to SQL where SQL
    serves the lexical legs."""
    if sql_lexical():
        _save_context_tokens(rows, records)
    with metrics.timed(metrics.INDEX, "upsert"):
        backends.vector_index().upsert(records)


def _save_context_tokens(rows: dict[str, Memory], records: Sequence[VectorRecord]) -> None:
    changed = []
    for record in records:
        memory = rows[record.id]
        tokens = record.context_lexical or record.lexical
        if memory.context_tokens != tokens:
            memory.context_tokens = tokens
            changed.append(memory)
    # A row deleted meanwhile updates nothing.
    Memory.objects.bulk_update(changed, ["context_tokens"], batch_size=500)


def _owe_now(memory_ids: Sequence[str]) -> None:
    """Owe upserts outside any change's transaction (the outbox pays them from the row)."""
    try:
        with transaction.atomic():
            owe(memory_ids)
    except DatabaseError as exc:
        log.warning("%d index writes not owed (sfm doctor finds them): %s", len(memory_ids), exc)


def _check_written(rows: dict[str, Memory], spans: dict[str, list[str]], rewrites: int) -> None:
    """After an index write: delete the rows deleted or archived meanwhile (their vectors
    would be orphans), and write again the rows that changed meanwhile or whose context
    holds an episode deleted meanwhile (a later writer may have landed first)."""
    ids = set(rows) | {j for span in spans.values() for j in span}
    now = {
        i: (updated, archived)
        for i, updated, archived in Memory.objects.filter(id__in=list(ids)).values_list(
            "id", "updated_at", "archived_at"
        )
    }
    gone = sorted(i for i in rows if i not in now or now[i][1] is not None)
    changed = sorted(
        i
        for i in rows
        if i in now
        and now[i][1] is None
        and (now[i][0] != rows[i].updated_at or any(j not in now for j in spans.get(i, ())))
    )
    if gone:
        backends.vector_index().delete(gone)
    if not changed:
        return
    if rewrites >= REWRITES:
        _owe_now(changed)
        return
    fresh = list(Memory.objects.filter(id__in=changed, archived_at__isnull=True))
    write_vectors(fresh, rewrites=rewrites + 1)


RANGES_PER_QUERY = 100
"""Time ranges per SQL query of `episodes_around` (SQLite bounds an expression's depth)."""


def episode_ranges(times: Iterable[datetime], window: timedelta) -> list[tuple[datetime, datetime]]:
    """The ranges within two context windows of any of `times` (a change rewrites its
    neighbours' contexts, and those need their neighbours), overlapping ones merged, in
    order."""
    ranges: list[tuple[datetime, datetime]] = []
    for t in sorted(times):
        low, high = t - 2 * window, t + 2 * window
        if ranges and low <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(high, ranges[-1][1]))
        else:
            ranges.append((low, high))
    return ranges


def episodes_around(
    tenant: str, namespace: str, times: Iterable[datetime], window: timedelta
) -> list[QuerySet[Memory]]:
    """The namespace's episodes within two context windows of any of `times`: querysets
    in time order, each ordered, so that their rows one after the other are in order. Only
    those windows are read: a batch of episodes spread over years reads their neighbourhoods,
    not the years between (every episode of the namespace, as it once did)."""
    ranges = episode_ranges(times, window)
    within = episodes_of(tenant, namespace)
    out = []
    for start in range(0, len(ranges), RANGES_PER_QUERY):
        # Each range a whole term, so the planner seeks each in the index (episodes_of):
        # with the ranges outside the terms SQLite read the whole scope.
        either = Q()
        for low, high in ranges[start : start + RANGES_PER_QUERY]:
            either |= within & Q(created_at__range=(low, high))
        out.append(Memory.objects.filter(either).order_by(*EPISODE_ORDER))
    return out


def _episode_sequences(memories: Sequence[Memory]) -> list[list[Memory]]:
    """Per namespace with new episodes: its episodes around them, in order."""
    window = timedelta(seconds=get_config().context_window_seconds)
    if not window:
        return []
    groups: dict[tuple[str, str], list[Memory]] = {}
    for m in memories:
        if m.type == "episodic":
            groups.setdefault((m.tenant_id, m.namespace), []).append(m)
    return [
        [
            m
            for part in episodes_around(tenant, namespace, [m.created_at for m in group], window)
            for m in part
        ]
        for (tenant, namespace), group in groups.items()
    ]


def _contexts(
    sequence: list[Memory],
    new: set[str],
    known: dict[str, Any],
    rows: dict[str, Memory],
    spans: dict[str, list[str]],
) -> dict[str, tuple[Any, str]]:
    """(vector, text) of each memory whose context the new ones change: the new ones and
    their neighbours. Adds old neighbours to `known` and `rows`, so they are rewritten, and
    each one's span (the ids its context holds) to `spans`."""

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
        spans[memory.id] = [m.id for m in span]
        out[memory.id] = context_of(span, known)
    return out


def context_of(span: Sequence[Memory], known: dict[str, Any]) -> tuple[Any, str]:
    """An episode's context from its span (itself and its neighbours, in time order): the
    normalised sum of their vectors, and their texts."""
    import numpy as np

    total = np.sum([known[m.id] for m in span], axis=0)
    return total / (float(np.linalg.norm(total)) or 1.0), "\n".join(m.content for m in span)


# -- the outbox ----------------------------------------------------------------------------


def grace() -> datetime:
    """When an outbox task written by a request becomes due: after the request itself has
    had its chance to pay it, so the worker does not race requests in flight."""
    config = get_config()
    return datetime.now(UTC) + timedelta(seconds=config.milvus_timeout + config.embedding_timeout)


def owe(memory_ids: Iterable[str], action: str = VectorTask.Action.UPSERT) -> list[VectorTask]:
    """Outbox tasks for these memories' index rows (`upsert` or `delete`): call it inside
    the transaction that makes the change, so the debt commits with it."""
    return VectorTask.objects.bulk_create(
        VectorTask(memory_id=i, action=action, next_attempt_at=grace()) for i in memory_ids
    )


def pay(tasks: Sequence[VectorTask]) -> None:
    """Remove paid outbox tasks. The change is already committed and acknowledged, so a
    database failure here is only logged: the worker pays the task again (idempotently)."""
    try:
        VectorTask.objects.filter(id__in=[t.id for t in tasks]).delete()
    except DatabaseError as exc:
        log.warning("paid outbox tasks not removed (they will be paid again): %s", exc)


def index_or_owe(memories: Sequence[Memory], vectors: Any, tasks: Sequence[VectorTask]) -> None:
    """Write vectors now; on failure the outbox tasks stay for the outbox worker."""
    try:
        write_vectors(memories, vectors)
    except Exception as exc:  # committed and acknowledged: whatever failed, the task stays
        log.warning("vector write owed for %d memories: %s", len(memories), exc)
        return
    pay(tasks)


def unindex(memory_ids: Sequence[str], tasks: Sequence[VectorTask]) -> bool:
    """Delete these index rows now and pay their tasks; on failure the tasks stay (a vector
    without its row is never a hit: the row decides). Returns whether it was paid."""
    try:
        backends.vector_index().delete(list(memory_ids))
    except Exception as exc:  # committed: the outbox worker deletes them later
        log.warning("vector deletes owed for %d memories: %s", len(memory_ids), exc)
        return False
    pay(tasks)
    return True


MAX_BACKOFF_SECONDS = 300.0
DEAD_AFTER = 10
"""Failures (with the index answering) after which a task is dead-lettered: about nine
minutes of backoff. A task that fails while the index is down only backs off."""


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
    alive = VectorTask.objects.filter(dead_at__isnull=True)
    owed = alive.filter(due) if due_only else alive
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
    index_up = bool(retry) and _index_answers()
    for task in retry:
        task.attempts += 1
        task.last_error = failed[task.memory_id][:500]
        task.next_attempt_at = failed_at + timedelta(seconds=backoff_seconds(task.attempts))
        if index_up and task.attempts >= DEAD_AFTER:
            task.dead_at = failed_at  # it is this write, not the index: stop retrying it
            log.error(
                "outbox: vector write of %s dead-lettered: %s", task.memory_id, task.last_error
            )
    if retry:
        fields = ["attempts", "last_error", "next_attempt_at", "dead_at"]
        VectorTask.objects.bulk_update(retry, fields)
        log.warning("outbox: %d vector writes still owed", len(retry))
    paid = [t.id for t in tasks if t.memory_id not in failed]
    VectorTask.objects.filter(id__in=paid).delete()
    return len(paid)


def _index_answers() -> bool:
    try:
        backends.vector_index().count()
    except Exception:
        return False
    return True


def outbox_depth() -> int:
    """Vector writes owed and still retried."""
    return VectorTask.objects.filter(dead_at__isnull=True).count()


def dead_letters() -> list[VectorTask]:
    """Vector writes given up on (DEAD_AFTER failures while the index answered)."""
    return list(VectorTask.objects.filter(dead_at__isnull=False).order_by("id"))


def outbox_health() -> str:
    """`ok`, or how many vector writes are dead-lettered."""
    try:
        dead = VectorTask.objects.filter(dead_at__isnull=False).count()
    except DatabaseError as exc:
        return f"error: {exc}"
    return "ok" if not dead else f"{dead} vector writes dead-lettered (see sfm doctor)"


def revive(tasks: Sequence[VectorTask]) -> None:
    """Retry dead-lettered tasks from the start (after the cause is fixed)."""
    VectorTask.objects.filter(id__in=[t.id for t in tasks]).update(
        dead_at=None, attempts=0, next_attempt_at=datetime.now(UTC)
    )


# -- deleting a row, and the traces it leaves in its neighbours' contexts ----------------


def delete_one(memory_id: str, tenant: str) -> list[str]:
    """Delete a memory's row (the acknowledgement), then its index row; the episodes that
    had it as a neighbour get their context rewritten without it. Returns the ids of its
    parents, which the caller re-summarizes (`tree.refresh_parents`)."""

    def delete_row() -> tuple[Memory, list[str], list[VectorTask]]:
        with transaction.atomic():
            gone = Memory.objects.filter(tenant_id=tenant, id=memory_id).first()
            if gone is None:
                raise MemoryNotFound(f"no memory {memory_id!r}", details={"id": memory_id})
            parents = links.parent_ids([memory_id]).get(memory_id, [])
            Memory.objects.filter(pk=gone.pk).delete()  # keeps `gone` whole below; links go
            return gone, parents, owe([memory_id], VectorTask.Action.DELETE)

    gone, parents, tasks = retry_integrity(delete_row)
    try:
        backends.vector_index().delete([memory_id])
        pay(tasks)
        rewrite_neighbours([gone])
    except Exception as exc:  # committed and acknowledged: the task stays
        log.warning("vector delete owed for %s: %s", memory_id, exc)
    return parents


def spans_next_to(
    order: Sequence[Place], gone: Sequence[Place], window: timedelta
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
    groups: dict[tuple[str, str], list[Place]] = {}
    for m in gone:
        if m.type == "episodic" and window:
            groups.setdefault((m.tenant_id, m.namespace), []).append(m.place)
    spans: dict[str, list[str]] = {}  # episode to rewrite -> its span, in time order
    for (tenant, namespace), places in groups.items():
        places.sort()
        around = episodes_around(tenant, namespace, [p[0] for p in places], window)
        order = [row for part in around for row in part.values_list(*EPISODE_ORDER)]
        spans.update(spans_next_to(order, places, window))
    ids = list(spans)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        rows = Memory.objects.in_bulk({j for i in chunk for j in spans[i]})
        known = vectors_of(list(rows.values()))
        records = []
        written: dict[str, Memory] = {}
        for memory_id in chunk:
            memory = rows.get(memory_id)
            span = [rows[j] for j in spans[memory_id] if j in rows]
            if memory is None or memory.archived_at is not None:
                continue
            records.append(vector_record(memory, known[memory_id], context_of(span, known)))
            written[memory_id] = memory
        _upsert(written, records)
        # Another delete may have taken one of these episodes meanwhile: the row decides.
        _check_written(written, {i: spans[i] for i in written}, 0)
    return len(ids)
