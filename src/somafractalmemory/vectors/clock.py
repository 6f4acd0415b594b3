"""When each collection was last written, shared by every worker: what a Session search waits for.

A Milvus search at Strong waits for the server's next time tick (200 ms at Milvus's default)
whatever was written; a search with a guarantee timestamp waits only until the server has
applied everything up to that timestamp. The index notes the time of each acknowledged write
here, and its searches guarantee the latest one: every worker sees every write acknowledged
before its search, and a read-mostly load pays no tick. Redis shares the clock between
processes; without Redis it is per process.

Times are milliseconds of the server's hybrid timestamps (physical part), which Redis's Lua
numbers hold exactly (a whole hybrid timestamp does not fit a double).
"""

from __future__ import annotations

import threading
from typing import Protocol

LOGICAL_BITS = 18
"""A Milvus hybrid timestamp is physical milliseconds << 18 | a logical counter."""


def guarantee(ms: int) -> int:
    """The hybrid timestamp a search waits for to see every write acknowledged by `ms` (the
    end of that millisecond); 1, Milvus's "nothing to wait for", when nothing was noted."""
    return ((ms + 1) << LOGICAL_BITS) if ms > 0 else 1


def physical(hybrid: int) -> int:
    return hybrid >> LOGICAL_BITS


class WriteClock(Protocol):
    def note(self, key: str, ms: int) -> None:
        """A write to `key` was acknowledged by time `ms` (keeps the latest)."""
        ...

    def latest(self, key: str) -> int:
        """The latest noted write time of `key`, 0 if none."""
        ...


class LocalClock:
    """One process's clock."""

    def __init__(self) -> None:
        self._times: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, key: str, ms: int) -> None:
        with self._lock:
            self._times[key] = max(ms, self._times.get(key, 0))

    def latest(self, key: str) -> int:
        return self._times.get(key, 0)


_NOTE_LUA = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > held then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""


class RedisClock:
    """Every process's clock, in Redis (an atomic max per key)."""

    PREFIX = "sfm:milvus-written:"

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._note = self._client.register_script(_NOTE_LUA)

    def note(self, key: str, ms: int) -> None:
        self._note(keys=[self.PREFIX + key], args=[ms])

    def latest(self, key: str) -> int:
        held = self._client.get(self.PREFIX + key)
        return int(held) if held else 0
