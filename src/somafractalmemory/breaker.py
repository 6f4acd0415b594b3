"""A circuit breaker for the optional cache (Redis): after a failure, callers skip it for a
few seconds instead of each waiting for its timeout. A Redis that accepts connections and
never answers then costs one timeout every `PAUSE_AFTER_FAILURE` seconds, not one per call."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE = 5.0
T = TypeVar("T")


class Breaker:
    """Open (skip the cache) for PAUSE_AFTER_FAILURE seconds after a failure."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return time.monotonic() < self._until

    def trip(self, exc: Exception) -> None:
        with self._lock:
            if not self.open:
                log.warning("cache unavailable, working without it for a while: %s", exc)
            self._until = time.monotonic() + PAUSE_AFTER_FAILURE

    def call(self, work: Callable[[], T], fallback: T) -> T:
        """`work()`, or `fallback` when the breaker is open or `work` fails (which opens it)."""
        if self.open:
            return fallback
        try:
            return work()
        except Exception as exc:  # the cache is optional: any failure degrades to none
            self.trip(exc)
            return fallback


cache = Breaker()
"""The one breaker of the cache every part of the service shares."""
