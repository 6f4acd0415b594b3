"""Keeping the vector index true to SQL: rebuild it (`reindex`) and find drift (`doctor`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from somafractalmemory import backends
from somafractalmemory.memories.models import Memory, VectorTask
from somafractalmemory.memories.services import write_vectors

Progress = Callable[[int, int], None]
"""Called with (done, total) as work advances."""

CHUNK = 1000


def _chunks(ids: list[str] | None = None) -> Iterator[list[Memory]]:
    """Every memory (or those of `ids`), a chunk at a time, by keyset paging on id."""
    query = Memory.objects.order_by("id")
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


def reindex(*, drop: bool = False, progress: Progress | None = None) -> ReindexReport:
    """Re-embed every memory into the current model's collection, then remove orphans.

    Without `drop` the collection keeps answering while it is rebuilt; with it, the rebuild
    starts from an empty collection (after a model change the collection is new anyway).
    """
    index = backends.vector_index()
    if drop:
        index.reset()
    report = ReindexReport()
    total = Memory.objects.count()
    tasks_before = VectorTask.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for chunk in _chunks():
        write_vectors(chunk)
        report.indexed += len(chunk)
        if progress:
            progress(report.indexed, total)
    known = set(Memory.objects.values_list("id", flat=True))
    orphans = [mid for mid, _ in index.entries() if mid not in known]
    index.delete(orphans)
    report.removed = len(orphans)
    # Tasks owed before the rebuild are settled by it.
    VectorTask.objects.filter(id__lte=tasks_before).delete()
    return report


@dataclass
class Drift:
    missing: list[str] = field(default_factory=list)
    """In SQL, not in the index."""
    orphaned: list[str] = field(default_factory=list)
    """In the index, not in SQL."""
    stale: list[str] = field(default_factory=list)
    """In both, but the index holds an older embedding."""

    @property
    def clean(self) -> bool:
        return not (self.missing or self.orphaned or self.stale)


def doctor(*, repair: bool = False, progress: Progress | None = None) -> Drift:
    """Compare SQL and the index; with `repair`, make the index match SQL."""
    index = backends.vector_index()
    indexed = dict(index.entries())
    drift = Drift()
    for memory_id, embedding_id in Memory.objects.values_list("id", "embedding_id").iterator():
        held = indexed.pop(memory_id, None)
        if held is None:
            drift.missing.append(memory_id)
        elif held != embedding_id:
            drift.stale.append(memory_id)
    drift.orphaned = sorted(indexed)
    if repair:
        todo = drift.missing + drift.stale
        done = 0
        for chunk in _chunks(todo):
            write_vectors(chunk)
            done += len(chunk)
            if progress:
                progress(done, len(todo))
        index.delete(drift.orphaned)
    return drift
