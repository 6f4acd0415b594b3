"""Memories as JSON lines: one memory per line with every field and its outgoing links (a
parent's `derived_from` links are its place in the hierarchy). Written before an erasure
that asks for it (`sfm purge --export`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

from django.db.models import Q

from somafractalmemory.memories.models import Link, Memory

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
        "links": [
            {"target": link.target_id, "kind": link.kind, "weight": link.weight}
            for link in links_out
        ],
    }


def write(ids: Iterable[str], stream: IO[str]) -> int:
    """Write the memories with these ids (those that exist) to `stream`; returns how many."""
    import json

    ids = list(ids)
    written = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        rows = Memory.objects.in_bulk(chunk)
        out: dict[str, list[Link]] = {}
        for link in Link.objects.filter(Q(source_id__in=chunk)).order_by("id"):
            out.setdefault(link.source_id, []).append(link)
        for memory_id in chunk:
            if memory_id in rows:
                line = record(rows[memory_id], out.get(memory_id, []))
                stream.write(json.dumps(line, ensure_ascii=False) + "\n")
                written += 1
    return written
