"""Reading without searching: memories a page at a time, namespaces counted, daily activity.

Cursors are opaque to clients: the last row's (event time, id), base64 JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, Q
from django.db.models.functions import TruncDate

from somafractalmemory.errors import InvalidCursor
from somafractalmemory.memories.identity import utc
from somafractalmemory.memories.models import DEFAULT_TENANT, Memory, valid_at


@dataclass(frozen=True)
class Page:
    memories: list[Memory]
    next_cursor: str | None


def _encode_cursor(memory: Memory) -> str:
    raw = json.dumps([memory.created_at.isoformat(), memory.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, memory_id = json.loads(raw)
        moment = datetime.fromisoformat(created)
        # Every cursor this service issues is an aware UTC time well inside years 1-9999.
        if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
            raise ValueError("not UTC")
        return moment, str(memory_id)
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc


def list_memories(
    *,
    tenant: str = DEFAULT_TENANT,
    namespace: str | None = None,
    types: Iterable[str] = (),
    limit: int = 50,
    cursor: str | None = None,
    archived: bool = False,
    as_of: datetime | None = None,
    include_invalid: bool = False,
    key: str | None = None,
) -> Page:
    """Memories newest first (by event time), a page at a time; `archived`: only those
    that forgetting archived, valid or not (else only the others). Only those valid `as_of`
    (default: now) and not expired, unless `include_invalid` (or `archived`)."""
    query = Memory.objects.filter(tenant_id=tenant, archived_at__isnull=not archived)
    if not (include_invalid or archived):
        now = datetime.now(UTC)
        query = query.filter(valid_at(utc(as_of) if as_of is not None else now, now))
    if namespace is not None:
        query = query.filter(namespace=namespace)
    if key is not None:  # the key's versions (valid as_of: its current one)
        query = query.filter(key=key)
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


@dataclass(frozen=True)
class NamespaceStats:
    namespace: str
    memories: int
    archived: int
    by_type: dict[str, int]
    by_level: dict[int, int]
    first: datetime | None
    last: datetime | None


def namespaces(
    *, tenant: str = DEFAULT_TENANT, only: str | None = None, within: Sequence[str] = ()
) -> list[NamespaceStats]:
    """The tenant's namespaces (`only` one; or those `within`, when given) with counts by
    type and level (archived counted apart)."""
    rows = Memory.objects.filter(tenant_id=tenant)
    if only is not None:
        rows = rows.filter(namespace=only)
    grouped = rows.values("namespace", "type", "level", archived=Q(archived_at__isnull=False))
    stats: dict[str, dict[str, Any]] = {}
    for row in grouped.annotate(n=Count("id"), first=Min("created_at"), last=Max("created_at")):
        held = stats.setdefault(
            row["namespace"],
            {
                "memories": 0,
                "archived": 0,
                "by_type": Counter(),
                "by_level": Counter(),
                "first": row["first"],
                "last": row["last"],
            },
        )
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
        if not within or name in within
    ]


def stored_per_day(tenant: str, since: date, within: Sequence[str] = ()) -> dict[date, int]:
    """How many memories the tenant stored each day since `since` (in the namespaces
    `within`, when given); days without any are left out."""
    rows = Memory.objects.filter(tenant_id=tenant, stored_at__date__gte=since)
    if within:
        rows = rows.filter(namespace__in=list(within))
    per_day = rows.annotate(day=TruncDate("stored_at")).values("day").annotate(n=Count("id"))
    return dict(per_day.values_list("day", "n"))
