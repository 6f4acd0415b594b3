"""Query-embedding cache over Django's cache (LocMem embedded, Redis in production).

The cache is an accelerator, never a dependency: when it fails, queries are embedded
directly, and after a failure it is left alone for a few seconds rather than waited on.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from django.core.cache import cache

from somafractalmemory.breaker import cache as breaker
from somafractalmemory.embedding.base import Embedder, Vectors

log = logging.getLogger(__name__)

TTL_SECONDS = 24 * 3600


PREFIX = "sfm:qemb"


def cache_key(model: str, text: str, tenant: str) -> str:
    """Keyed by tenant, model and whitespace-normalised text. Per tenant: one tenant's
    queries cannot be timed by another, and an erasure can drop a tenant's entries."""
    normal = " ".join(text.split())
    digest = hashlib.sha256(f"{model}\0{normal}".encode()).hexdigest()
    return f"{PREFIX}:{tenant}:{digest}"


def embed_query(embedder: Embedder, text: str, *, tenant: str) -> Vectors:
    """One query's vector (shape (dim,)), from the cache when it has it."""
    key = cache_key(embedder.query_name, text, tenant)
    raw = breaker.call(lambda: cache.get(key), None)  # any cache failure: no cache
    if raw is not None:
        return np.frombuffer(raw, dtype=np.float32)
    vector = embedder.embed_queries([text])[0]
    breaker.call(lambda: cache.set(key, vector.astype(np.float32).tobytes(), TTL_SECONDS), None)
    return vector


def forget_tenant(tenant: str) -> int:
    """Delete the tenant's cached query vectors; returns how many went. Django's cache API
    cannot list keys, so this reaches into the two back ends the service configures."""
    made = cache.make_key(f"{PREFIX}:{tenant}:")
    backend = cache._cache  # type: ignore[attr-defined]
    if hasattr(backend, "get_client"):  # Redis
        client = backend.get_client(write=True)
        keys = list(client.scan_iter(match=made + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    with cache._lock:  # type: ignore[attr-defined]  # LocMem
        keys = [k for k in backend if k.startswith(made)]
        for k in keys:
            del backend[k]
            cache._expire_info.pop(k, None)  # type: ignore[attr-defined]
    return len(keys)


def cache_health() -> str:
    """`ok`, or the error a round trip to the cache raises."""
    try:
        cache.set("sfm:health", "1", 10)
        if cache.get("sfm:health") != "1":
            return "error: value did not round-trip"
        return "ok"
    except Exception as exc:
        return f"error: {exc}"
