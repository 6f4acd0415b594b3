"""What the vector index implementations share: their names, their gate, file ownership."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from somafractalmemory.errors import IndexLocked


def collection_name(model: str, dim: int) -> str:
    """One collection per embedding model and dimension."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.rsplit("/", 1)[-1].lower()).strip("_")
    return f"sfm_{slug[:180]}_{dim}"


class Gate:
    """Many calls at once, or one exclusive operation (closing, scrubbing) alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True  # new readers wait from here on
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def claim(path: Path, what: str) -> IO[str]:
    """Lock `path` (created if missing) for this process, or raise IndexLocked naming `what`.

    The lock goes with the process: a crashed owner leaves nothing to clean up.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 - held open while the lock is held
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise IndexLocked(
            f"{what} is open in another process (one process owns it: use the running "
            "server's API, or stop the server first)"
        ) from None
    atexit.register(handle.close)  # held until the index closes, or the process ends
    return handle


def release(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
    atexit.unregister(handle.close)
