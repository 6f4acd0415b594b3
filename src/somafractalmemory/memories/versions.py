"""Memories that change: validity in time, versions of a key, supersession and history.

A memory is valid from `valid_from` until `valid_until` (exclusive; none: still valid) and
leaves searches and listings at `expires_at` (`models.hidden_because`). A store that carries
a `key` is that key's next version in its namespace: the version before it (by `valid_from`)
is closed at the new one's `valid_from`, and a `supersedes` link joins them; a store that
names `supersedes` closes those memories the same way. Nothing is deleted: the old versions
stay fetchable, listable with `include_invalid`, searchable `as_of` an earlier instant.

Stores of one key run one after the other (`_lock_key`), and one open version per key is
also the database's rule (the `key_open_once` constraint): should two stores of a key race
past the lock, the second one's transaction fails and is run again on what the first one
committed (`remember.store_many`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Q

from somafractalmemory.errors import InvalidValidity, MemoryNotFound, ValidationFailed
from somafractalmemory.memories.identity import utc
from somafractalmemory.memories.models import SUPERSEDES, Link, Memory

MAX_KEY = 200
HISTORY_LIMIT = 1000
"""Most versions `history` returns (a key rewritten more often keeps its newest)."""


@dataclass(frozen=True)
class Times:
    valid_from: datetime
    valid_until: datetime | None
    expires_at: datetime | None


def _checked(
    start: datetime,
    end: datetime | None,
    expires_at: datetime | None,
    ttl_seconds: int | None,
    now: datetime,
    *,
    kept: Times | None = None,
) -> Times:
    """Times that hold together: `end` after `start`; an expiry at `expires_at` or
    `ttl_seconds` after `now` (not both), in the future. What a change leaves as it was
    (`kept`: the memory's times) is not checked again: a version closed at its own start by
    one that replaced it at once, an expiry already past."""
    if expires_at is not None and ttl_seconds is not None:
        raise InvalidValidity(
            "give expires_at or ttl_seconds, not both", details={"fields": ["expires_at"]}
        )
    start, end = utc(start), utc(end) if end is not None else None
    same = kept is not None and (kept.valid_from, kept.valid_until) == (start, end)
    if end is not None and end <= start and not same:
        raise InvalidValidity(
            f"valid_until ({end.isoformat()}) is not after valid_from ({start.isoformat()})",
            details={"valid_from": start.isoformat(), "valid_until": end.isoformat()},
        )
    expiry = utc(expires_at) if expires_at is not None else None
    if ttl_seconds is not None:
        expiry = now + timedelta(seconds=ttl_seconds)
    if expiry is not None and expiry <= now and (kept is None or expiry != kept.expires_at):
        raise InvalidValidity(
            f"expires_at ({expiry.isoformat()}) is not in the future",
            details={"expires_at": expiry.isoformat()},
        )
    return Times(start, end, expiry)


def resolve(
    created_at: datetime,
    now: datetime,
    *,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    expires_at: datetime | None = None,
    ttl_seconds: int | None = None,
    default_ttl: int | None = None,
) -> Times:
    """A new memory's validity and expiry, checked: valid from `valid_from` or, unset, its
    event time (`created_at`) or `now` if that is earlier; it expires at `expires_at`, or
    `ttl_seconds` (else the namespace's `default_ttl`) after `now`."""
    start = valid_from if valid_from is not None else min(utc(created_at), now)
    if expires_at is None and ttl_seconds is None:
        ttl_seconds = default_ttl
    return _checked(start, valid_until, expires_at, ttl_seconds, now)


TIMES = ("valid_from", "valid_until", "expires_at", "ttl_seconds")


def revise(memory: Memory, changes: dict[str, Any], now: datetime) -> None:
    """Apply a change's validity and expiry fields (TIMES) to `memory`, checked as a
    store's are; `ttl_seconds` counts from `now`."""
    if not any(name in changes for name in TIMES):
        return
    ttl = changes.get("ttl_seconds")
    kept = None if ttl is not None else memory.expires_at  # a new TTL replaces the expiry
    times = _checked(
        changes.get("valid_from", memory.valid_from),
        changes.get("valid_until", memory.valid_until),
        changes.get("expires_at", kept),
        ttl,
        now,
        kept=Times(
            utc(memory.valid_from),
            memory.valid_until and utc(memory.valid_until),
            memory.expires_at,
        ),
    )
    memory.valid_from, memory.valid_until = times.valid_from, times.valid_until
    memory.expires_at = times.expires_at


def check_key(key: str) -> None:
    if len(key) > MAX_KEY or any(not c.isprintable() for c in key):
        raise ValidationFailed(
            f"key: at most {MAX_KEY} printable characters", details={"field": "key"}
        )


def _order(memory: Memory) -> tuple[datetime, datetime, str]:
    return (memory.valid_from, memory.stored_at, memory.id)


def _lock_key(tenant: str, namespace: str, key: str) -> None:
    """Hold the key until the caller's transaction ends, so that stores of one key run one
    after the other and each reads the versions the one before it committed. PostgreSQL:
    an advisory lock on the key's hash (a key without versions has no row to lock);
    SQLite: its write transactions (`transaction_mode: IMMEDIATE`) already run one at a
    time."""
    if connection.vendor != "postgresql":
        return
    digest = hashlib.blake2b(f"{tenant}\0{namespace}\0{key}".encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, signed=True)])


def _close(version: Memory, at: datetime) -> bool:
    """End `version` at `at` if it is valid past it (never before its own start: a version
    replaced by one that begins earlier was never valid); whether it changed."""
    end = max(at, version.valid_from)
    if version.valid_until is not None and version.valid_until <= end:
        return False
    version.valid_until = end
    return True


def close_replaced(
    tenant: str, new: Sequence[Memory], named: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """In the caller's transaction, before `new` is inserted: close what each new memory
    replaces, and say which ids those are (new id -> replaced ids, for the links).

    A keyed memory goes into its key's versions by `valid_from` (then arrival): the version
    before it ends at its `valid_from`, and it ends where the version after it begins (an
    import of an older version lands in its place). `named` (new id -> `supersedes`): those
    memories, of the tenant and the new memory's namespace, end at its `valid_from`."""
    replaced: dict[str, list[str]] = {}
    changed: dict[str, Memory] = {}

    def _locked(**where: Any) -> Any:
        """The tenant's rows `where` says, locked until the transaction ends (not against
        the foreign-key checks of links made meanwhile), with what ordering reads."""
        rows = Memory.objects.select_for_update(no_key=True).filter(tenant_id=tenant, **where)
        return rows.only("id", "tenant_id", "namespace", "valid_from", "valid_until", "stored_at")

    keyed: dict[tuple[str, str], list[Memory]] = {}
    for memory in new:
        if memory.key:
            keyed.setdefault((memory.namespace, memory.key), []).append(memory)
    for namespace, key in sorted(keyed):  # one order for every store: no deadlock
        _lock_key(tenant, namespace, key)
    for (namespace, key), arriving in keyed.items():
        versions = sorted(_locked(namespace=namespace, key=key), key=_order)
        for memory in arriving:
            before = [v for v in versions if _order(v) <= _order(memory)]
            after = [v for v in versions if _order(v) > _order(memory)]
            if after and memory.valid_until is None:
                memory.valid_until = after[0].valid_from
            # Every earlier version still valid at its start ends there (the one just
            # before it, and any other a PATCH or an explicit end left open past it).
            for previous in before:
                if _close(previous, memory.valid_from):
                    changed[previous.id] = previous
            if before:
                replaced.setdefault(memory.id, []).append(before[-1].id)
            versions = [*before, memory, *after]
    wanted = {i for ids in named.values() for i in ids}
    if wanted:
        rows = {m.id: m for m in _locked(id__in=wanted)}
        by_id = {m.id: m for m in new}
        for memory_id, ids in named.items():
            memory = by_id[memory_id]
            for old_id in ids:
                old = changed.get(old_id) or rows.get(old_id)
                if old is None:
                    raise MemoryNotFound(
                        f"supersedes: no memory {old_id!r}", details={"id": old_id}
                    )
                if old.namespace != memory.namespace:
                    raise ValidationFailed(
                        f"supersedes: memory {old_id!r} is in another namespace",
                        details={"id": old_id, "namespace": old.namespace},
                    )
                if _close(old, memory.valid_from):
                    changed[old.id] = old
                if old_id not in replaced.get(memory_id, []):
                    replaced.setdefault(memory_id, []).append(old_id)
    new_ids = {m.id for m in new}
    for old in changed.values():
        if old.id not in new_ids:  # the batch's own rows are inserted as they are
            Memory.objects.filter(pk=old.id).update(valid_until=old.valid_until)
    return replaced


def link_replaced(tenant: str, replaced: dict[str, list[str]]) -> None:
    """The `supersedes` links of `close_replaced`'s answer (new -> replaced)."""
    Link.objects.bulk_create(
        [
            Link(tenant_id=tenant, source_id=new, target_id=old, kind=SUPERSEDES)
            for new, olds in replaced.items()
            for old in olds
        ],
        ignore_conflicts=True,
    )


def history(memory: Memory) -> list[Memory]:
    """Every version of `memory`, oldest first (by `valid_from`, then arrival): the other
    memories of its key, and those joined to it by `supersedes` links, either way and
    transitively; the newest HISTORY_LIMIT."""
    tenant = memory.tenant_id
    found = {memory.id: memory}
    keys = {(memory.namespace, memory.key)} if memory.key else set()
    read: set[tuple[str, str]] = set()
    frontier = {memory.id}
    while frontier and len(found) < HISTORY_LIMIT * 2:
        joined = Link.objects.filter(tenant_id=tenant, kind=SUPERSEDES).filter(
            Q(source_id__in=frontier) | Q(target_id__in=frontier)
        )
        ids = {i for pair in joined.values_list("source_id", "target_id") for i in pair}
        wanted = Q(pk__in=ids - set(found))
        for namespace, key in keys - read:  # each key's versions are read once
            wanted |= Q(namespace=namespace, key=key)
        read |= keys
        rows = Memory.objects.filter(wanted, tenant_id=tenant)
        fresh = [m for m in rows if m.id not in found]
        found.update((m.id, m) for m in fresh)
        keys |= {(m.namespace, m.key) for m in fresh if m.key}
        frontier = {m.id for m in fresh}
    return sorted(found.values(), key=_order)[-HISTORY_LIMIT:]
