"""What a store may hold: content and metadata limits, batch size, and the tenant's quotas.

Each check raises the error the API answers with (413 for sizes, 403 for quotas, 422 for
values), before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db.models import Sum

from somafractalmemory.conf import get_config
from somafractalmemory.errors import (
    BatchTooLarge,
    ContentTooLarge,
    MetadataTooLarge,
    QuotaExceeded,
    ValidationFailed,
)
from somafractalmemory.memories.models import Memory, Tenant
from somafractalmemory.retrieval import filters

MAX_KEY_PATHS_BYTES = 60_000
"""The index holds metadata key paths in one JSON field, and Milvus at most 64 KiB per JSON
field: refused here, before the store is acknowledged, rather than owed forever."""


def check_batch(size: int) -> None:
    limit = get_config().max_batch
    if size > limit:
        raise BatchTooLarge(
            f"{size} memories in one batch; the limit is {limit}",
            details={"size": size, "limit": limit},
        )


MAX_QUERY_CHARS = 4_000
"""A search's text: ample for a question, and it bounds the work one search causes."""
LIMIT_CEILINGS = {
    "max_memories": 2**31 - 1,
    "max_bytes": 2**63 - 1,
    "requests_per_minute": 2**31 - 1,
}
"""The largest value each tenant limit can hold (its column's range on every database)."""
INT64 = (-(2**63), 2**63 - 1)
"""What the index (and PostgreSQL's JSON) can hold of an integer."""


def utf8_size(text: str, field: str) -> int:
    """Bytes of `text` in UTF-8; a lone surrogate (which no UTF-8 can hold) is refused."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationFailed(
            f"{field} holds a lone surrogate (not a character): send valid Unicode",
            details={"field": field},
        ) from None


def _check_values(value: Any, path: str) -> None:
    """Every integer of a JSON value within 64 bits, every key and string valid Unicode."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise ValidationFailed(
            f"{path} is an integer outside 64 bits, which the index cannot hold",
            details={"field": path},
        )
    if isinstance(value, dict):
        for key, item in value.items():
            utf8_size(str(key), f"{path} key")
            _check_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_values(item, f"{path}[{n}]")
    elif isinstance(value, str):
        utf8_size(value, path)


def check_query(text: str) -> None:
    if not text.strip():
        raise ValidationFailed("query is empty", details={"field": "query"})
    if len(text) > MAX_QUERY_CHARS:
        raise ValidationFailed(
            f"query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}",
            details={"field": "query", "size": len(text), "limit": MAX_QUERY_CHARS},
        )
    utf8_size(text, "query")


def check_content(content: str) -> None:
    config = get_config()
    if not content.strip():
        raise ValidationFailed("content is empty", details={"field": "content"})
    if "\x00" in content:
        raise ValidationFailed("content contains a NUL character", details={"field": "content"})
    size = utf8_size(content, "content")
    if size > config.max_content_bytes:
        raise ContentTooLarge(
            f"content is {size} bytes; the limit is {config.max_content_bytes}",
            details={"size": size, "limit": config.max_content_bytes},
        )


def check_metadata(metadata: dict[str, Any]) -> None:
    limit = get_config().max_metadata_bytes
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValidationFailed(
            "metadata holds NaN or Infinity, which JSON cannot", details={"field": "metadata"}
        ) from None
    if "\\u0000" in text:
        raise ValidationFailed("metadata contains a NUL character", details={"field": "metadata"})
    _check_values(metadata, "metadata")
    size = len(text.encode("utf-8"))
    paths = len(json.dumps(filters.presence_map(metadata)).encode("utf-8"))
    if size > limit or paths > MAX_KEY_PATHS_BYTES:
        raise MetadataTooLarge(
            f"metadata is {size} bytes as JSON (limit {limit}), its key paths "
            f"{paths} bytes (limit {MAX_KEY_PATHS_BYTES})",
            details={"size": size, "limit": limit, "key_paths": paths},
        )


def check_quota(tenant: str, contents: Sequence[str], *, lock: bool = False) -> None:
    """Refuse (403 quota_exceeded) a store that would take the tenant past its limits.

    With `lock` (inside the store's transaction), a tenant with limits has its row locked
    first, so that concurrent stores, from any worker, are counted one after the other and
    never pass a limit together. (FOR NO KEY UPDATE: inserting memories, which only share
    the row, is not held up.) A tenant without limits locks nothing."""
    limits = Tenant.objects.filter(id=tenant).values("max_memories", "max_bytes").first()
    if not limits or not contents:
        return
    if limits["max_memories"] is None and limits["max_bytes"] is None:
        return
    if lock:
        locked = Tenant.objects.select_for_update(no_key=True).filter(id=tenant)
        limits = locked.values("max_memories", "max_bytes").first() or limits
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
