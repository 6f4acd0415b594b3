"""Ranking as pure functions: fusion of ranked lists, decay, and the final score.

No I/O here: numbers in, numbers out, so every rule has a unit or property test.

final = w_relevance * relevance + w_recency * recency + w_importance * importance, where
- relevance is the weighted reciprocal-rank fusion of the retrieval legs, scaled to [0, 1]
  (1 = first in every leg), raised for memories said by someone the query names or
  dated in a window it names (`credit`) and for episodes whose sitting holds other good
  candidates (`lift_sittings`);
- recency = 0.5 ** (age / half_life), age counted from the later of the memory's event time
  and its last access, with a half-life per memory type;
- importance is the memory's own importance in [0, 1].
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

DAY = 86_400.0
RRF_K = 60


@dataclass(frozen=True)
class Weights:
    relevance: float = 0.85
    recency: float = 0.05
    importance: float = 0.10


@dataclass(frozen=True)
class HalfLives:
    """Days until recency halves, per memory type."""

    episodic: float = 30.0
    semantic: float = 180.0
    summary: float = 365.0

    def seconds(self, memory_type: str) -> float:
        return float(getattr(self, memory_type, self.episodic)) * DAY


@dataclass(frozen=True)
class Fusion:
    """Weight of each retrieval leg in reciprocal-rank fusion, and its k.

    Defaults measured on LoCoMo dev (docs/benchmarks.md): a small k lets the first ranks of
    each leg dominate, and the lexical leg (stemmed BM25) is the stronger one there.
    `speaker` is the relevance gained by a memory whose speaker the query names (x3 at
    2.0); `dates` by a memory whose event time is in a window the query names
    (`retrieval.dates`; x3 at 2.0); `sitting` the share of its sitting's best relevances
    an episode gains (`lift_sittings`). Chosen by cross-validation over conversations
    (docs/benchmarks.md).
    """

    vector: float = 0.7
    lexical: float = 1.0
    context_vector: float = 0.7
    context_lexical: float = 1.0
    k: int = 10
    speaker: float = 2.0
    dates: float = 2.0
    sitting: float = 0.2


@dataclass(frozen=True)
class Scoring:
    weights: Weights = field(default_factory=Weights)
    half_lives: HalfLives = field(default_factory=HalfLives)
    fusion: Fusion = field(default_factory=Fusion)


def rrf(
    rankings: Sequence[Sequence[str]], *, k: int = RRF_K, weights: Sequence[float] | None = None
) -> dict[str, float]:
    """Reciprocal-rank fusion, scaled so that first place in every list scores 1.0."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    total = sum(weights)
    if total <= 0:
        return {}
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(dict.fromkeys(ranking)):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank + 1)
    best = total / (k + 1)
    return {item: score / best for item, score in fused.items()}


def credit(
    relevance: Mapping[str, float], favoured: Collection[str], boost: float
) -> dict[str, float]:
    """Relevance with the memories in `favoured` (said by someone the query names, or dated
    in a window it names) multiplied by 1 + `boost`, all scaled back to [0, 1]: a soft
    signal that reorders, never filters. Unchanged when no candidate is favoured."""
    if boost <= 0 or not any(item in favoured for item in relevance):
        return dict(relevance)
    scale = 1.0 + boost
    return {item: rel if item in favoured else rel / scale for item, rel in relevance.items()}


SITTING_BEST = 3
"""How many of a sitting's best relevances lift its episodes."""


def sittings(times: Mapping[str, float], gap: float) -> dict[str, int]:
    """Episodes grouped into sittings: in time order, a new sitting starts where the time
    since the previous episode exceeds `gap` seconds. Sittings are numbered from 0."""
    number, previous, out = -1, None, {}
    for item, at in sorted(times.items(), key=lambda pair: (pair[1], pair[0])):
        if previous is None or at - previous > gap:
            number += 1
        out[item], previous = number, at
    return out


def lift_sittings(
    relevance: Mapping[str, float], sitting: Mapping[str, int], share: float
) -> dict[str, float]:
    """Each memory of a sitting gains `share` x the sum of its sitting's SITTING_BEST best
    relevances (its own included), then all are scaled back to [0, 1]: where several
    memories of one sitting answer, that sitting is likely the one asked about (the
    cluster hypothesis). Memories outside `sitting` keep their relevance (before scaling)."""
    if share <= 0:
        return dict(relevance)
    members: dict[int, list[float]] = {}
    for item, rel in relevance.items():
        if item in sitting:
            members.setdefault(sitting[item], []).append(rel)
    best = {s: sum(sorted(rels, reverse=True)[:SITTING_BEST]) for s, rels in members.items()}
    scale = 1.0 + share * SITTING_BEST
    return {
        item: (rel + share * best[sitting[item]] if item in sitting else rel) / scale
        for item, rel in relevance.items()
    }


def decay(age_seconds: float, half_life_seconds: float) -> float:
    """0.5 ** (age / half_life): 1.0 now, 0.5 after one half-life; future times count as now."""
    if half_life_seconds <= 0:
        return 0.0
    return float(0.5 ** (max(age_seconds, 0.0) / half_life_seconds))


@dataclass(frozen=True)
class Components:
    relevance: float
    recency: float
    importance: float
    score: float


def score(relevance: float, recency: float, importance: float, weights: Weights) -> Components:
    """The blended score and its parts (for `explain`)."""
    total = (
        weights.relevance * relevance + weights.recency * recency + weights.importance * importance
    )
    return Components(relevance, recency, importance, total)


def rank(
    relevance: Mapping[str, float],
    *,
    ages: Mapping[str, float],
    types: Mapping[str, str],
    importance: Mapping[str, float],
    scoring: Scoring,
) -> list[tuple[str, Components]]:
    """Items by final score, best first (ties by relevance, then id, for stable order)."""
    scored = [
        (
            item,
            score(
                rel,
                decay(ages[item], scoring.half_lives.seconds(types[item])),
                importance[item],
                scoring.weights,
            ),
        )
        for item, rel in relevance.items()
    ]
    scored.sort(key=lambda pair: (-pair[1].score, -pair[1].relevance, pair[0]))
    return scored


# -- forgetting ---------------------------------------------------------------------------

IMPORTANCE_STABILITY = 4.0
"""An importance of 1 makes a memory last five times as long as one of importance 0."""


def stability_seconds(half_life_seconds: float, importance: float, strength: float) -> float:
    """How slowly a memory fades (its retention half-life): the type's half-life, stretched
    by importance (x1 to x5) and by recall (`strength` grows by 0.5 at every recall)."""
    return half_life_seconds * (1.0 + IMPORTANCE_STABILITY * importance) * max(strength, 1.0)


def retention(
    age_seconds: float, half_life_seconds: float, importance: float, strength: float
) -> float:
    """Ebbinghaus-style retention in [0, 1]: 0.5 ** (age / stability), age since the memory
    last mattered (its event or its last recall)."""
    return decay(age_seconds, stability_seconds(half_life_seconds, importance, strength))


def forgettable(retained: float, importance: float, *, threshold: float, floor: float) -> bool:
    """Archive a memory when it has faded below `threshold` and matters less than `floor`."""
    return retained < threshold and importance < floor
