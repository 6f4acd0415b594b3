"""What the service needs of a summarizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Summarizer(Protocol):
    name: str

    def summarize(self, texts: Sequence[str], *, max_bytes: int) -> str:
        """One text standing for `texts` (in time order), at most `max_bytes` UTF-8 bytes."""
        ...


def clip(text: str, max_bytes: int) -> str:
    """`text` cut to `max_bytes` UTF-8 bytes, at a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore").rstrip()
