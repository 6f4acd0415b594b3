"""Grouping for consolidation, as a pure function: items close in time and in meaning.

One pass over the items in time order. Each item joins the most similar open group (cosine
to the group's mean vector) if that is at least `threshold`, else it opens a new group. A
group is open while the item is within `window` seconds of the group's time span. Existing
parents enter as `seeds`: open groups from the start, so new items fold into them instead of
into new parents. Cost: sorting, then O(n * open groups * dim).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Item:
    id: str
    time: float
    """Seconds (any epoch)."""
    vector: Vector
    """Unit length."""


@dataclass
class Group:
    key: str | None
    """The seed's id, or None for a new group."""
    start: float
    end: float
    total: Vector
    """Sum of the members' vectors (the direction of their mean)."""
    members: list[str] = field(default_factory=list)
    """New members only (a seed's existing children are not listed)."""

    def similarity(self, vector: Vector) -> float:
        norm = float(np.linalg.norm(self.total))
        return float(self.total @ vector) / norm if norm > 0 else 0.0

    def add(self, item: Item) -> None:
        self.members.append(item.id)
        self.total = self.total + item.vector
        self.start, self.end = min(self.start, item.time), max(self.end, item.time)


def seed(key: str, start: float, end: float, total: Vector) -> Group:
    return Group(key, start, end, np.asarray(total, dtype=np.float32))


def group(
    items: Sequence[Item],
    *,
    window: float,
    threshold: float,
    seeds: Sequence[Group] = (),
    max_open: int = 16,
) -> list[Group]:
    """Seeds that gained members, then new groups, each in order of first member."""
    seeds = sorted(seeds, key=lambda g: g.start)
    waiting = list(seeds)  # seeds not yet open, by start
    open_groups: list[Group] = []
    made: list[Group] = []
    for item in sorted(items, key=lambda i: (i.time, i.id)):
        while waiting and waiting[0].start - window <= item.time:
            open_groups.append(waiting.pop(0))
        open_groups = [g for g in open_groups if item.time - g.end <= window]
        best, best_score = None, threshold
        for candidate in open_groups:
            if candidate.start - window > item.time:
                continue
            score = candidate.similarity(item.vector)
            if score >= best_score:
                best, best_score = candidate, score
        if best is None:
            best = Group(None, item.time, item.time, np.zeros_like(item.vector))
            made.append(best)
            open_groups.append(best)
            # Bound the work per item: keep the most recently active groups.
            if len(open_groups) > max_open:
                open_groups.sort(key=lambda g: g.end)
                open_groups = open_groups[-max_open:]
        best.add(item)
    return [g for g in seeds if g.members] + made
