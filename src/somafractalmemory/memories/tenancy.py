"""Tenants, API keys, who is calling, rate limits and the audit log.

A key is `sfm_` + 32 random bytes (base32); only its SHA-256 is stored, so a leaked
database does not leak keys, and lookup by digest compares no secret byte by byte. Keys
carry scopes (`read`, `write`, `admin`) and an optional namespace allow-list.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, Sum

from somafractalmemory import backends, crypto
from somafractalmemory.breaker import cache as breaker
from somafractalmemory.conf import get_config
from somafractalmemory.errors import (
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from somafractalmemory.memories.identity import new_id
from somafractalmemory.memories.limits import LIMIT_CEILINGS
from somafractalmemory.memories.models import (
    DEFAULT_TENANT,
    ApiKey,
    AuditEntry,
    Memory,
    NamespacePolicy,
    Tenant,
    forget_data_key,
)

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "sfm_"
TENANT_NAME = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and, with a key, the key's id, scopes and namespaces."""

    tenant: str
    key_id: str | None = None
    scopes: tuple[str, ...] = ("read", "write", "admin")
    namespaces: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        return self.key_id or "anonymous"


ANONYMOUS = Principal(DEFAULT_TENANT)
CLI = Principal(DEFAULT_TENANT, key_id="cli")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def authenticate(header: str | None, client: str) -> Principal:
    """The caller of a request with this `Authorization` header, from this address."""
    config = get_config()
    if not header:
        if config.auth == "required":
            raise Unauthorized("this service needs an API key: `Authorization: Bearer sfm_...`")
        return ANONYMOUS
    scheme, _, key = header.partition(" ")
    key = key.strip()
    shown = key[:12]  # the part of a key that `prefix` shows: failures are counted by it
    _refuse_repeated_failures(client, shown)
    found = None
    if scheme.lower() == "bearer" and key.startswith(KEY_PREFIX) and len(key) < 200:
        found = ApiKey.objects.filter(digest=digest(key)).select_related("tenant").first()
    if (
        found is None
        or found.revoked_at is not None
        or not hmac.compare_digest(found.digest, digest(key))
    ):
        _count_failure(client, shown)
        audit(
            DEFAULT_TENANT if found is None else found.tenant_id,
            "anonymous",
            "auth.denied",
            resource=found.id if found else "",
            outcome="denied",
            details={"client": client, "revoked": bool(found)},
        )
        raise Unauthorized("unknown or revoked API key")
    now = datetime.now(UTC)
    if found.last_used_at is None or (now - found.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=found.pk).update(last_used_at=now)  # at most once a minute
    return Principal(found.tenant_id, found.id, tuple(found.scopes), tuple(found.namespaces))


FAILURE_WINDOW = 60.0  # seconds: `auth_failures_per_minute` counts failures over this long


def recent_failures(previous: int, current: int, elapsed: float) -> float:
    """Failures in the last minute, estimated from two fixed one-minute counters: the
    previous minute's count, weighted by the part of it still inside the last 60 s, plus
    this minute's. (Two fixed windows alone would forget every failure at each boundary, so
    a guesser could fail twice the limit across one.) `elapsed` is the part of this minute
    gone, in [0, 1)."""
    return previous * (1.0 - elapsed) + current


def seconds_until_allowed(previous: int, current: int, elapsed: float, limit: int) -> float:
    """How long until one more failure fits under `limit` again, if none comes meanwhile."""
    room = limit - 1  # the next failure must leave the estimate at or under the limit
    if recent_failures(previous, current, elapsed) <= room:
        return 0.0
    if current <= room and previous > 0:  # the previous minute's weight fades this minute
        return FAILURE_WINDOW * (1.0 - (room - current) / previous - elapsed)
    # Only when this minute's own count has faded enough, in the next one.
    fade = 1.0 - room / current if current else 0.0
    return FAILURE_WINDOW * (1.0 - elapsed + fade)


def _failure_counts(client: str, shown: str, add: bool) -> tuple[int, int, float]:
    """The failed keys from this client, and from this client with this key prefix (the
    larger of the two estimates wins): (previous minute, this minute, part of this minute
    gone). With `add`, this failure is counted first; with not, only this key's counters
    are read (a valid key is never refused for other keys' failures)."""
    minute, seconds = divmod(time.time(), FAILURE_WINDOW)
    elapsed = seconds / FAILURE_WINDOW
    tag = hashlib.sha256(shown.encode("utf-8", "replace")).hexdigest()[:16]
    kinds = [f"sfm:authfail:{client}:{tag}"] + ([f"sfm:authfail:{client}"] if add else [])
    worst = (0, 0)
    for kind in kinds:
        this_minute = f"{kind}:{int(minute)}"
        if add:
            cache.add(this_minute, 0, timeout=int(3 * FAILURE_WINDOW))
            current = int(cache.incr(this_minute))
        else:
            current = int(cache.get(this_minute, 0) or 0)
        previous = int(cache.get(f"{kind}:{int(minute) - 1}", 0) or 0)
        if recent_failures(previous, current, elapsed) > recent_failures(*worst, elapsed):
            worst = (previous, current)
    return worst[0], worst[1], elapsed


def _too_many(counts: tuple[int, int, float]) -> None:
    limit = get_config().auth_failures_per_minute
    previous, current, elapsed = counts
    if recent_failures(previous, current, elapsed) > limit:
        raise RateLimited(
            "too many failed API keys from this address; wait a minute",
            retry_after=max(1.0, seconds_until_allowed(previous, current, elapsed, limit)),
        )


def _refuse_repeated_failures(client: str, shown: str) -> None:
    """Refuse, before looking it up, a key that has failed too often in the last minute
    from this client. Only that key: a valid key is never refused for other keys' failures."""
    _too_many(breaker.call(lambda: _failure_counts(client, shown, add=False), (0, 0, 0.0)))


def _count_failure(client: str, shown: str) -> None:
    """Count a failed key; past the limit from this client in the last minute, failures
    answer 429 (a 401 otherwise). The cache is optional: without it, nothing is counted."""
    _too_many(breaker.call(lambda: _failure_counts(client, shown, add=True), (0, 0, 0.0)))


def check_rate(principal: Principal) -> None:
    """The tenant's requests per minute (`Tenant.requests_per_minute`) as a token bucket:
    a burst of up to the limit, refilled at limit/60 per second. The bucket lives in Redis
    when `redis_url` is set (every worker shares it), else in this process."""
    limit = _limits(principal.tenant).get("requests_per_minute")
    if not limit:
        return
    # Without Redis, requests are not counted (availability first).
    wait = breaker.call(lambda: _buckets().take(f"sfm:bucket:{principal.tenant}", limit), 0.0)
    if wait > 0:
        raise RateLimited(
            f"tenant {principal.tenant!r} is limited to {limit} requests per minute",
            retry_after=wait,
            details={"limit": limit},
        )


def gcra(tat: float, now: float, limit: int) -> tuple[float, float]:
    """One request against a token bucket of `limit` per minute, in the GCRA form: `tat`
    is the bucket's theoretical arrival time. Returns (new tat, seconds to wait); a wait
    above 0 means refused (and the tat is unchanged)."""
    interval = 60.0 / limit
    tolerance = interval * (limit - 1)
    tat = max(tat, now)
    if tat - now > tolerance + 1e-6:  # (the tat is a sum of intervals: rounding slack)
        # At most one interval: the tat is never further ahead (min() drops rounding).
        return tat, min(interval, tat - now - tolerance)
    return tat + interval, 0.0


class LocalBuckets:
    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, name: str, limit: int) -> float:
        with self._lock:
            tat, wait = gcra(self._tats.get(name, 0.0), time.time(), limit)
            self._tats[name] = tat
            return wait


GCRA_LUA = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tat < now then tat = now end
if tat - now > tolerance + 1e-6 then return tostring(math.min(interval, tat - now - tolerance)) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now) * 1000))
return '0'
"""


class RedisBuckets:
    """The same GCRA step, atomically in Redis (one Lua script per request)."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._client.register_script(GCRA_LUA)

    def take(self, name: str, limit: int) -> float:
        interval = 60.0 / limit
        wait = self._script(keys=[name], args=[time.time(), interval, interval * (limit - 1)])
        return float(wait)


_bucket_store: LocalBuckets | RedisBuckets | None = None


def _buckets() -> LocalBuckets | RedisBuckets:
    global _bucket_store
    if _bucket_store is None:
        url = get_config().redis_url
        _bucket_store = RedisBuckets(url) if url else LocalBuckets()
    return _bucket_store


def _limits(tenant: str) -> dict[str, Any]:
    name = f"sfm:limits:{tenant}"
    held = breaker.call(lambda: cache.get(name), None)
    if held is None:
        row = (
            Tenant.objects.filter(id=tenant)
            .values("max_memories", "max_bytes", "requests_per_minute")
            .first()
        )
        held = row or {}
        breaker.call(lambda: cache.set(name, held, timeout=10), None)
    return dict(held)


def usage(tenant: str) -> dict[str, Any]:
    rows = Memory.objects.filter(tenant_id=tenant)
    stored = rows.aggregate(n=Sum("size"))["n"] or 0
    return {
        "tenant": tenant,
        "memories": rows.count(),
        "bytes": int(stored),
        "limits": _limits(tenant),
    }


# -- namespaces' policies -----------------------------------------------------------------


def policy(tenant: str, namespace: str) -> NamespacePolicy:
    """The namespace's policy (the defaults, unsaved, when it has none)."""
    found = NamespacePolicy.objects.filter(tenant_id=tenant, namespace=namespace).first()
    return found or NamespacePolicy(tenant_id=tenant, namespace=namespace)


def set_policy(
    tenant: str, namespace: str, *, ttl_seconds: int | None, on_expiry: str
) -> NamespacePolicy:
    ensure_tenant(tenant)
    found, _ = NamespacePolicy.objects.update_or_create(
        tenant_id=tenant,
        namespace=namespace,
        defaults={"ttl_seconds": ttl_seconds, "on_expiry": on_expiry},
    )
    return found


def default_ttls(tenant: str, namespaces: set[str]) -> dict[str, int]:
    """The default time to live, in seconds, of those of `namespaces` that have one."""
    rows = NamespacePolicy.objects.filter(
        tenant_id=tenant, namespace__in=namespaces, ttl_seconds__isnull=False
    )
    return {ns: ttl for ns, ttl in rows.values_list("namespace", "ttl_seconds") if ttl}


# -- tenants and keys (admin) ------------------------------------------------------------


def ensure_tenant(tenant: str) -> None:
    Tenant.objects.get_or_create(id=tenant)


def list_tenants() -> list[Tenant]:
    return list(Tenant.objects.order_by("id"))


def memory_counts() -> dict[str, int]:
    """Each tenant's number of memories (archived included)."""
    counted = Tenant.objects.annotate(n=Count("memories")).values_list("id", "n")
    return dict(counted)


def create_tenant(name: str, **limits: int | None) -> Tenant:
    import re

    if not re.match(TENANT_NAME, name):
        raise ValidationFailed(
            "tenant names are lower-case letters, digits, `_` and `-` (at most 63)",
            details={"tenant": name},
        )
    for limit, value in limits.items():
        ceiling = LIMIT_CEILINGS.get(limit)
        if value is not None and ceiling is not None and not 1 <= value <= ceiling:
            raise ValidationFailed(
                f"{limit} must be between 1 and {ceiling}", details={"limit": limit}
            )
    tenant, _ = Tenant.objects.update_or_create(
        id=name, defaults={k: v for k, v in limits.items() if k in LIMIT_CEILINGS}
    )
    cache_forget(name)
    return tenant


def cache_forget(tenant: str) -> None:
    with contextlib.suppress(Exception):
        cache.delete(f"sfm:limits:{tenant}")


def get_tenant(name: str) -> Tenant:
    found = Tenant.objects.filter(id=name).first()
    if found is None:
        raise NotFound(f"no tenant {name!r}", details={"tenant": name})
    return found


def delete_tenant(name: str) -> dict[str, int]:
    """Delete a tenant: first its data key (crypto-shredding: from then on nothing sealed
    with it can be read, wherever a copy lies), then its vectors and rows."""
    tenant = get_tenant(name)
    Tenant.objects.filter(id=name).update(wrapped_key="")
    forget_data_key(name)
    ids = list(Memory.objects.filter(tenant=tenant).values_list("id", flat=True))
    index = backends.vector_index()
    for start in range(0, len(ids), 1000):
        index.delete(ids[start : start + 1000])
    with transaction.atomic():
        keys = ApiKey.objects.filter(tenant=tenant).count()
        tenant.delete()
    cache_forget(name)
    return {"memories": len(ids), "keys": keys}


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str = field(repr=False)


def create_key(
    tenant: str, scopes: Sequence[str], *, namespaces: Sequence[str] = (), name: str = ""
) -> NewKey:
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise ValidationFailed(
            f"scopes must be some of {list(SCOPES)}", details={"scopes": list(scopes)}
        )
    get_tenant(tenant)
    secret = KEY_PREFIX + base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()
    key = ApiKey.objects.create(
        id=new_id("key"),
        tenant_id=tenant,
        name=name,
        prefix=secret[:12],
        digest=digest(secret),
        scopes=sorted(set(scopes), key=SCOPES.index),
        namespaces=sorted(set(namespaces)),
    )
    return NewKey(key, secret)


def list_keys(tenant: str | None = None) -> list[ApiKey]:
    query = ApiKey.objects.order_by("tenant_id", "created_at", "id")
    return list(query.filter(tenant_id=tenant) if tenant else query)


def revoke_key(key_id: str, *, tenant: str | None = None) -> ApiKey:
    query = ApiKey.objects.filter(id=key_id)
    if tenant is not None:
        query = query.filter(tenant_id=tenant)
    key = query.first()
    if key is None:
        raise NotFound(f"no key {key_id!r}", details={"id": key_id})
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        key.save(update_fields=["revoked_at"])
    return key


# -- audit -------------------------------------------------------------------------------


def audit(
    tenant: str,
    actor: str,
    action: str,
    *,
    resource: str = "",
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> None:
    """Record an admin action, a denial or a deletion (counts and ids, never content)."""
    try:
        AuditEntry.objects.create(
            tenant=tenant,
            actor=actor,
            action=action,
            resource=resource[:200],
            outcome=outcome,
            details=details or {},
        )
    except Exception as exc:  # an audit failure must not turn a denial into a 500
        log.error("audit entry lost (%s %s %s): %s", tenant, action, resource, exc)


def audit_log(
    tenant: str | None, *, limit: int = 100, before: int | None = None
) -> list[AuditEntry]:
    query = AuditEntry.objects.order_by("-id")
    if tenant is not None:
        query = query.filter(tenant=tenant)
    if before is not None:
        query = query.filter(id__lt=before)
    return list(query[:limit])


KEY_PROBES = 100


def keys_health() -> str:
    """`ok` when this process can wrap and unwrap data keys with its master key and opens
    the tenants' wrapped keys (up to KEY_PROBES of them): else every store and read would
    fail with `decryption_failed`, so the service is not ready."""
    try:
        masters = crypto.master_keys(get_config())
        probe = crypto.new_data_key()
        crypto.unwrap(crypto.wrap(probe, "probe", masters[0]), "probe", masters)
        wrapped = Tenant.objects.exclude(wrapped_key="").order_by("id")
        for tenant, key in wrapped.values_list("id", "wrapped_key")[:KEY_PROBES]:
            crypto.unwrap(key, tenant, masters)
    except Exception as exc:  # a probe reports, it does not raise
        return f"error: {exc}"
    return "ok"


def rotate_master_key() -> dict[str, int]:
    """Re-wrap every tenant's data key with the current master key (`master_key`), reading
    keys wrapped by `master_key_previous`. Memories are not re-encrypted."""
    masters = crypto.master_keys(get_config())
    current = crypto.key_id(masters[0])
    done = kept = 0
    for tenant, wrapped in Tenant.objects.exclude(wrapped_key="").values_list("id", "wrapped_key"):
        if wrapped.split(":", 2)[1] == current:
            kept += 1
            continue
        key = crypto.unwrap(wrapped, tenant, masters)
        Tenant.objects.filter(id=tenant, wrapped_key=wrapped).update(
            wrapped_key=crypto.wrap(key, tenant, masters[0])
        )
        done += 1
    return {"rewrapped": done, "current": kept}
