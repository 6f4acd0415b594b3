"""The query-embedding cache speeds up repeats and is never a dependency."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from django.test import override_settings

from somafractalmemory import backends
from somafractalmemory.embedding import cache as qcache
from somafractalmemory.embedding.base import SameForQueries, Vectors
from tests.conftest import Api

DEAD_REDIS = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}


class CountingEmbedder(SameForQueries):
    """The real model, counting how often it is asked."""

    def __init__(self) -> None:
        self.inner = backends.embedder()
        self.name = self.inner.name
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        return self.inner.embed(texts)


def test_repeat_queries_come_from_the_cache() -> None:
    embedder = CountingEmbedder()
    # A query no earlier run has cached (Redis outlives test runs).
    query = f"where did I park the car on day {uuid.uuid4().hex}?"
    first = qcache.embed_query(embedder, query, tenant="t")
    again = qcache.embed_query(embedder, "  " + query.replace(" ", "   ") + " ", tenant="t")
    assert embedder.calls == 1
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, embedder.inner.embed([query])[0], rtol=1e-6)
    assert qcache.cache_key("a", "q", "t") != qcache.cache_key("b", "q", "t")  # keyed by model
    assert qcache.cache_key("a", "q", "t") != qcache.cache_key("a", "q", "u")  # and by tenant


def test_forgetting_a_tenant_drops_only_its_entries() -> None:
    embedder = CountingEmbedder()
    mine, theirs = f"t-{uuid.uuid4().hex}", f"u-{uuid.uuid4().hex}"
    for n in range(3):
        qcache.embed_query(embedder, f"query {n}", tenant=mine)
    qcache.embed_query(embedder, "query 0", tenant=theirs)
    assert qcache.forget_tenant(mine) == 3
    assert qcache.forget_tenant(mine) == 0
    calls = embedder.calls
    qcache.embed_query(embedder, "query 0", tenant=theirs)  # still cached
    qcache.embed_query(embedder, "query 0", tenant=mine)  # embedded again
    assert embedder.calls == calls + 1


def test_dead_cache_degrades_but_serves(api: Api, namespace: str) -> None:
    with override_settings(CACHES=DEAD_REDIS):
        try:
            ready = api.ok("GET", "/readyz")
            assert ready["status"] == "degraded"
            assert ready["checks"]["cache"].startswith("error")
            stored = api.ok(
                "POST", "/memory/store", {"content": "Cache-free fact", "namespace": namespace}
            )
            embedder = CountingEmbedder()
            qcache.embed_query(embedder, "a query while the cache is down", tenant="t")
            qcache.embed_query(embedder, "a query while the cache is down", tenant="t")
            assert embedder.calls == 2  # no cache, no error
            hits = api.ok("POST", "/memory/search", {"query": "cache-free", "namespace": namespace})
            assert hits["memories"][0]["id"] == stored["id"]
        finally:
            qcache.breaker._until = 0.0
    assert api.ok("GET", "/readyz")["status"] == "ready"


def test_a_cache_that_never_answers_costs_one_timeout_not_one_per_call(
    api: Api, namespace: str
) -> None:
    """A Redis that accepts connections and never replies: after its first timeout the
    service leaves it alone (the breaker), so a burst of requests sends it one command."""
    import socket
    import threading

    from somafractalmemory import breaker

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    commands: list[bytes] = []
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return
            held.append(peer)
            threading.Thread(target=read, args=(peer,), daemon=True).start()

    def read(peer: socket.socket) -> None:
        while chunk := peer.recv(65536):
            commands.extend(c for c in chunk.split(b"\r\n") if c.startswith(b"*"))

    threading.Thread(target=accept, daemon=True).start()
    sick = {
        "default": {
            **DEAD_REDIS["default"],
            "LOCATION": f"redis://{listener.getsockname()[0]}:{listener.getsockname()[1]}/0",
        }
    }
    try:
        # However slow this machine is, the burst fits inside the breaker's pause.
        breaker_pause = breaker.PAUSE_AFTER_FAILURE
        breaker.PAUSE_AFTER_FAILURE = 3600.0
        with override_settings(CACHES=sick):
            for n in range(6):
                body = {"query": f"a question {n}", "namespace": namespace}
                api.ok("POST", "/memory/search", body)
                api.ok("GET", "/usage")
    finally:
        breaker.PAUSE_AFTER_FAILURE = breaker_pause
        breaker.cache._until = 0.0
        listener.close()
        for peer in held:
            peer.close()
    assert 1 <= len(commands) <= 2, commands
