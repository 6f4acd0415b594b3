"""Prometheus metrics of this process, served at `/metrics`.

Counters and histograms live in one registry of their own. With several gunicorn workers
each process counts for itself (a scrape reaches one worker); run one worker per scrape
target, or aggregate in Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
# Milliseconds matter here: searches take 10-100 ms, stores of a batch seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)

REQUESTS = Counter(
    "sfm_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "sfm_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
STORED = Counter("sfm_memories_stored", "Memories stored (new rows).", registry=REGISTRY)
SEARCHES = Counter("sfm_searches", "Searches answered, by mode.", ["mode"], registry=REGISTRY)
EMBEDDING = Histogram(
    "sfm_embedding_seconds",
    "Time in the embedding model, per call.",
    ["kind"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
INDEX = Histogram(
    "sfm_vector_index_seconds",
    "Time in vector index calls.",
    ["operation"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
DENIALS = Counter(
    "sfm_quota_denials", "Requests refused by a quota or rate limit.", ["code"], registry=REGISTRY
)
OUTBOX = Gauge("sfm_outbox_depth", "Vector writes owed (the outbox).", registry=REGISTRY)
DEAD = Gauge("sfm_outbox_dead", "Vector writes dead-lettered (see sfm doctor).", registry=REGISTRY)


@contextmanager
def timed(histogram: Histogram, label: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(label).observe(time.perf_counter() - started)


def watch_outbox(depth: Callable[[], int], dead: Callable[[], int]) -> None:
    """Read the outbox depth and its dead letters at each scrape."""
    OUTBOX.set_function(lambda: float(depth()))
    DEAD.set_function(lambda: float(dead()))


def exposition() -> bytes:
    return generate_latest(REGISTRY)
