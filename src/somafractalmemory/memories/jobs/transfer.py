"""Memories as JSON lines, out and back in: one memory per line with every field and its
outgoing links (a parent's `derived_from` links are its place in the hierarchy). Written by
`sfm export` and before an erasure that asks for it (`sfm purge --export`); read by
`sfm import`, which is idempotent (a memory already there is skipped)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from django.db import transaction
from django.db.models import Q

from somafractalmemory import backends
from somafractalmemory.errors import Conflict, IndexUnavailable, ValidationFailed
from somafractalmemory.memories import indexing, links, versions
from somafractalmemory.memories.identity import sources_hash_of
from somafractalmemory.memories.jobs.runner import Progress, quiet
from somafractalmemory.memories.models import (
    Link,
    Memory,
    MemoryType,
    data_key,
    default_valid_from,
)
from somafractalmemory.memories.tenancy import ensure_tenant

FORMAT = "sfm-memory/1"
CHUNK = 500


def _moment(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def record(memory: Memory, links_out: list[Link]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "id": memory.id,
        "tenant": memory.tenant_id,
        "namespace": memory.namespace,
        "type": memory.type,
        "level": memory.level,
        "content": memory.content,
        "metadata": memory.metadata,
        "importance": memory.importance,
        "created_at": _moment(memory.created_at),
        "stored_at": _moment(memory.stored_at),
        "updated_at": _moment(memory.updated_at),
        "span_end": _moment(memory.span_end),
        "archived_at": _moment(memory.archived_at),
        "access_count": memory.access_count,
        "last_accessed_at": _moment(memory.last_accessed_at),
        "strength": memory.strength,
        "considered_at": _moment(memory.considered_at),
        "key": memory.key,
        "valid_from": _moment(memory.valid_from),
        "valid_until": _moment(memory.valid_until),
        "expires_at": _moment(memory.expires_at),
        "links": [
            {"target": link.target_id, "kind": link.kind, "weight": link.weight}
            for link in links_out
        ],
    }


def lines(ids: Iterable[str], progress: Progress = quiet) -> Iterator[str]:
    """The export's lines (JSON and a newline) of the memories with these ids that exist,
    read CHUNK at a time."""
    ids = list(ids)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        rows = Memory.objects.in_bulk(chunk)
        out: dict[str, list[Link]] = {}
        for link in Link.objects.filter(Q(source_id__in=chunk)).order_by("id"):
            out.setdefault(link.source_id, []).append(link)
        for memory_id in chunk:
            if memory_id in rows:
                line = record(rows[memory_id], out.get(memory_id, []))
                yield json.dumps(line, ensure_ascii=False) + "\n"
        progress(start + len(chunk), len(ids))


def write(ids: Iterable[str], stream: IO[str], progress: Progress = quiet) -> int:
    """Write the memories with these ids (those that exist) to `stream`; returns how many."""
    written = 0
    for line in lines(ids, progress):
        stream.write(line)
        written += 1
    return written


def memory_ids(tenant: str, namespaces: Iterable[str] = ()) -> Iterator[str]:
    """The tenant's memory ids (in these namespaces, when given), oldest first."""
    query = Memory.objects.filter(tenant_id=tenant)
    if namespaces:
        query = query.filter(namespace__in=list(namespaces))
    yield from query.order_by("created_at", "id").values_list("id", flat=True).iterator()


@dataclass
class Imported:
    memories: int = 0
    """New memories written."""
    skipped: int = 0
    """Memories already there (the same id in the same tenant): left as they are."""
    links: int = 0
    """New links written (a link whose ends are both there)."""
    owed: int = 0
    """Memories whose vectors the outbox still owes (the index was not available)."""


REQUIRED = ("id", "tenant", "namespace", "type", "content", "created_at")


def _when(value: Any, line: int, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationFailed(
            f"line {line}: {name} is not an ISO 8601 time", details={"line": line, "field": name}
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # naive means UTC


def parse(stream: IO[str]) -> list[dict[str, Any]]:
    """Every record of an export, checked; the first bad line is refused with its number."""
    records = []
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(
                f"line {line}: not JSON ({exc.msg})", details={"line": line}
            ) from None
        if not isinstance(item, dict) or item.get("format") != FORMAT:
            raise ValidationFailed(f"line {line}: not an {FORMAT} record", details={"line": line})
        missing = [k for k in REQUIRED if not item.get(k)]
        if missing:
            raise ValidationFailed(
                f"line {line}: missing {', '.join(missing)}",
                details={"line": line, "missing": missing},
            )
        if item["type"] not in MemoryType.values:
            raise ValidationFailed(
                f"line {line}: unknown type {item['type']!r}", details={"line": line}
            )
        if item["type"] == MemoryType.EPISODIC and item.get("level"):
            # Episodes are the tree's leaves: what reads them seeks level 0.
            raise ValidationFailed(
                f"line {line}: an episodic memory is at level 0, not {item['level']!r}",
                details={"line": line},
            )
        for name in (
            "created_at",
            "stored_at",
            "span_end",
            "archived_at",
            "last_accessed_at",
            "considered_at",
            "valid_from",
            "valid_until",
            "expires_at",
        ):
            item[name] = _when(item.get(name), line, name)
        try:
            versions.check_key(str(item.get("key") or ""))
        except ValidationFailed as exc:
            raise ValidationFailed(f"line {line}: {exc.message}", details={"line": line}) from None
        start, end = item.get("valid_from"), item.get("valid_until")
        if start is not None and end is not None and end < start:
            raise ValidationFailed(
                f"line {line}: valid_until is before valid_from", details={"line": line}
            )
        records.append(item)
    return records


def _row(item: dict[str, Any], tenant: str) -> Memory:
    memory = Memory(
        id=item["id"],
        tenant_id=tenant,
        namespace=item["namespace"],
        type=item["type"],
        level=int(item.get("level") or 0),
        metadata=item.get("metadata") or {},
        importance=float(item.get("importance", 0.5)),
        created_at=item["created_at"],
        stored_at=item.get("stored_at") or item["created_at"],
        span_end=item.get("span_end"),
        archived_at=item.get("archived_at"),
        access_count=int(item.get("access_count") or 0),
        last_accessed_at=item.get("last_accessed_at"),
        strength=float(item.get("strength", 1.0)),
        key=str(item.get("key") or ""),
        # An earlier export has none: the default, its event time or arrival if earlier.
        valid_from=item.get("valid_from")
        or default_valid_from(item["created_at"], item.get("stored_at") or item["created_at"]),
        valid_until=item.get("valid_until"),
        expires_at=item.get("expires_at"),
    )
    memory.set_content(item["content"])
    memory.considered_at = item.get("considered_at")  # where consolidation had got to
    return memory


def load(stream: IO[str], *, tenant: str | None = None, progress: Progress = quiet) -> Imported:
    """Import an export: each memory into its own tenant (or all into `tenant`), with its
    links and place in the hierarchy. The whole file is checked before anything is written;
    memories already there are skipped, so running it again changes nothing. Vectors are
    written as each chunk is stored when the index is available, else owed to the outbox
    (a running server's worker, or `sfm reindex --pending`, writes them)."""
    return load_records(parse(stream), tenant=tenant, progress=progress)


def load_records(
    records: list[dict[str, Any]], *, tenant: str | None = None, progress: Progress = quiet
) -> Imported:
    """`load` of records `parse` has checked."""
    owner = {r["id"]: tenant or r["tenant"] for r in records}
    held: dict[str, str] = {}
    ids = list(owner)
    for start in range(0, len(ids), CHUNK):
        held.update(
            Memory.objects.filter(id__in=ids[start : start + CHUNK]).values_list("id", "tenant_id")
        )
    taken = sorted(i for i, t in held.items() if t != owner[i])
    if taken:
        raise Conflict(
            f"{len(taken)} memory ids belong to another tenant here", details={"ids": taken[:20]}
        )
    fresh = [r for r in records if r["id"] not in held]
    done = Imported(skipped=len(records) - len(fresh))
    try:
        backends.vector_index()
        index_up = True
    except IndexUnavailable:
        index_up = False
    for start in range(0, len(fresh), CHUNK):
        chunk = fresh[start : start + CHUNK]
        for name in {owner[r["id"]] for r in chunk}:
            ensure_tenant(name)
            data_key(name, check=True)
        rows = [_row(r, owner[r["id"]]) for r in chunk]
        with transaction.atomic():
            # A key's versions already here and the imported ones make one history, with
            # one open version (the newest): each lands in its place (versions.py).
            replaced: dict[str, dict[str, list[str]]] = {}
            for name in {m.tenant_id for m in rows}:
                mine = [m for m in rows if m.tenant_id == name]
                replaced[name] = versions.close_replaced(name, mine, {})
            Memory.objects.bulk_create(rows)
            for name, pairs in replaced.items():
                versions.link_replaced(name, pairs)
            tasks = indexing.owe(m.id for m in rows)
        if index_up:
            indexing.index_or_owe(rows, None, tasks)
        else:
            done.owed += len(rows)
        done.memories += len(rows)
        progress(start + len(chunk), len(fresh))
    done.links = _load_links(records, owner)
    _refresh_sources(owner, [r["id"] for r in fresh if int(r.get("level") or 0) > 0])
    return done


def _load_links(records: list[dict[str, Any]], owner: dict[str, str]) -> int:
    """Every exported link whose two ends are in the link's tenant; existing ones kept."""
    wanted = [
        (owner[r["id"]], r["id"], str(x["target"]), str(x["kind"]), float(x.get("weight", 1)))
        for r in records
        for x in r.get("links") or []
    ]
    ends = {t for _, _, t, _, _ in wanted} | {s for _, s, _, _, _ in wanted}
    there: dict[str, str] = {}
    listed = list(ends)
    for start in range(0, len(listed), CHUNK):
        there.update(
            Memory.objects.filter(id__in=listed[start : start + CHUNK]).values_list(
                "id", "tenant_id"
            )
        )
    made = [
        Link(tenant_id=tenant, source_id=source, target_id=target, kind=kind, weight=weight)
        for tenant, source, target, kind, weight in wanted
        if there.get(source) == tenant and there.get(target) == tenant
    ]
    before = Link.objects.filter(source_id__in=[link.source_id for link in made]).count()
    for start in range(0, len(made), CHUNK):
        Link.objects.bulk_create(made[start : start + CHUNK], ignore_conflicts=True)
    return Link.objects.filter(source_id__in=[link.source_id for link in made]).count() - before


def _refresh_sources(owner: dict[str, str], parents: list[str]) -> None:
    """Imported parents' `sources_hash` from their children's content hashes here (they are
    keyed per tenant and store), so consolidation sees them as up to date."""
    kids = links.child_ids(parents)
    hashes = dict(
        Memory.objects.filter(id__in=[c for cs in kids.values() for c in cs]).values_list(
            "id", "content_hash"
        )
    )
    for parent in parents:
        children = [(c, hashes[c]) for c in kids.get(parent, []) if c in hashes]
        Memory.objects.filter(id=parent).update(sources_hash=sources_hash_of(children))
