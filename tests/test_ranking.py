"""Fusion, decay and scoring: pure functions, unit and property tests."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from somafractalmemory.retrieval import dates
from somafractalmemory.retrieval.ranking import (
    DAY,
    HalfLives,
    Scoring,
    Weights,
    credit,
    decay,
    lift_sittings,
    rank,
    rrf,
    score,
    sittings,
)

ids = st.lists(st.sampled_from([f"m{i}" for i in range(12)]), max_size=12, unique=True)


def test_rrf_first_everywhere_is_one_and_order_follows_ranks() -> None:
    fused = rrf([["a", "b", "c"], ["a", "c"]])
    assert fused["a"] == pytest.approx(1.0)
    assert fused["a"] > fused["c"] > fused["b"]
    assert rrf([["a"], ["b"]], weights=[3, 1])["a"] > rrf([["a"], ["b"]], weights=[3, 1])["b"]
    assert rrf([]) == {}
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1, 2])


@given(st.lists(ids, min_size=1, max_size=4))
def test_rrf_is_bounded_and_rewards_agreement(rankings: list[list[str]]) -> None:
    fused = rrf(rankings)
    assert set(fused) == {i for r in rankings for i in r}
    assert all(0 < v <= 1 + 1e-12 for v in fused.values())
    # Appearing in one more list never lowers an item's fused score.
    for item in fused:
        more = [*rankings, [item]]
        assert rrf(more)[item] * len(more) >= fused[item] * len(rankings) - 1e-12


@given(ids, ids)
def test_rrf_is_symmetric_in_its_lists(a: list[str], b: list[str]) -> None:
    assert rrf([a, b]) == pytest.approx(rrf([b, a]))


def test_credit_lifts_the_named_and_keeps_the_scale() -> None:
    relevance = {"a": 1.0, "b": 0.7, "c": 0.4}
    credited = credit(relevance, {"b"}, 1.0)
    assert credited == pytest.approx({"a": 0.5, "b": 0.7, "c": 0.2})
    assert credit(relevance, {"x"}, 1.0) == relevance  # no candidate named
    assert credit(relevance, {"b"}, 0.0) == relevance


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.floats(0, 1), min_size=1),
    st.sets(st.sampled_from("abcdefgh")),
    st.floats(0, 5),
)
def test_credit_reorders_only_across_the_two_sets(
    relevance: dict[str, float], named: set[str], boost: float
) -> None:
    credited = credit(relevance, named, boost)
    assert set(credited) == set(relevance)
    assert all(0 <= v <= 1 for v in credited.values())
    for x in relevance:
        for y in relevance:
            same_side = (x in named) == (y in named)
            if same_side and relevance[x] > relevance[y]:
                assert credited[x] >= credited[y]  # order kept within either side
            if x in named and y not in named and relevance[x] >= relevance[y]:
                assert credited[x] >= credited[y]  # a named memory never falls behind


def test_sittings_split_where_the_gap_is_longer_than_allowed() -> None:
    times = {"a": 0.0, "b": 3000.0, "c": 6000.0, "d": 20_000.0, "e": 20_000.0}
    assert sittings(times, 3600) == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
    assert sittings(times, 0) == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 3}
    assert sittings({}, 3600) == {}


def test_lift_sittings_favours_the_sitting_with_several_answers() -> None:
    relevance = {"alone": 0.9, "a1": 0.8, "a2": 0.6, "a3": 0.5, "a4": 0.1, "parent": 0.85}
    sitting = {"alone": 0, "a1": 1, "a2": 1, "a3": 1, "a4": 1}  # the parent is in none
    lifted = lift_sittings(relevance, sitting, 0.2)
    assert lifted["a1"] > lifted["alone"] and lifted["a1"] > lifted["parent"]
    # The sitting's three best count, whoever is lifted: a4 gains as much as a1.
    scale = 1 + 0.2 * 3
    assert lifted["a4"] == pytest.approx((0.1 + 0.2 * 1.9) / scale)
    assert lifted["alone"] == pytest.approx((0.9 + 0.2 * 0.9) / scale)
    assert lifted["parent"] == pytest.approx(0.85 / scale)
    assert lift_sittings(relevance, sitting, 0.0) == relevance


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.floats(0, 1), min_size=1),
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 2)),
    st.floats(0, 2),
)
def test_lift_sittings_is_bounded_and_keeps_order_within_a_sitting(
    relevance: dict[str, float], sitting: dict[str, int], share: float
) -> None:
    lifted = lift_sittings(relevance, sitting, share)
    assert set(lifted) == set(relevance)
    assert all(0 <= v <= 1 + 1e-9 for v in lifted.values())
    for x in relevance:
        for y in relevance:
            same = x in sitting and y in sitting and sitting[x] == sitting[y]
            neither = x not in sitting and y not in sitting
            if (same or neither) and relevance[x] > relevance[y]:
                assert lifted[x] >= lifted[y]


def test_decay_halves_per_half_life() -> None:
    assert decay(0, DAY) == 1.0
    assert decay(DAY, DAY) == pytest.approx(0.5)
    assert decay(3 * DAY, DAY) == pytest.approx(0.125)
    assert decay(-5 * DAY, DAY) == 1.0  # the future counts as now
    assert decay(DAY, 0) == 0.0


@given(st.floats(0, 1e9), st.floats(0, 1e9), st.floats(1, 1e8))
def test_decay_is_monotone_and_bounded(a: float, b: float, half_life: float) -> None:
    older, newer = max(a, b), min(a, b)
    assert 0 <= decay(older, half_life) <= decay(newer, half_life) <= 1


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_score_is_the_weighted_sum(rel: float, rec: float, imp: float) -> None:
    parts = score(rel, rec, imp, Weights(0.5, 0.3, 0.2))
    assert parts.score == pytest.approx(0.5 * rel + 0.3 * rec + 0.2 * imp)
    assert (parts.relevance, parts.recency, parts.importance) == (rel, rec, imp)


def test_rank_blends_recency_and_importance_per_type() -> None:
    relevance = {"old": 1.0, "new": 0.9, "vital": 0.9}
    ages = {"old": 365 * DAY, "new": 0.0, "vital": 365 * DAY}
    types = {"old": "episodic", "new": "episodic", "vital": "episodic"}
    importance = {"old": 0.5, "new": 0.5, "vital": 1.0}
    pure = rank(
        relevance,
        ages=ages,
        types=types,
        importance=importance,
        scoring=Scoring(weights=Weights(1, 0, 0)),
    )
    assert [i for i, _ in pure] == ["old", "new", "vital"]  # ties by id
    blended = rank(
        relevance,
        ages=ages,
        types=types,
        importance=importance,
        scoring=Scoring(weights=Weights(0.6, 0.3, 0.1)),
    )
    assert blended[0][0] == "new"
    by_importance = rank(
        relevance,
        ages=ages,
        types=types,
        importance=importance,
        scoring=Scoring(weights=Weights(0.5, 0.0, 0.5)),
    )
    assert by_importance[0][0] == "vital"
    # A semantic memory keeps its recency far longer than an episodic one.
    lives = HalfLives()
    assert decay(90 * DAY, lives.seconds("semantic")) > decay(90 * DAY, lives.seconds("episodic"))
    assert math.isclose(decay(30 * DAY, lives.seconds("episodic")), 0.5)


WHEN = datetime(2023, 10, 13, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("What did she paint on October 13, 2023?", [WHEN], [WHEN + timedelta(days=1)]),
        ("what happened on 13th Oct 2023", [WHEN], [WHEN - timedelta(days=1)]),
        ("notes from 2023-10-13", [WHEN], [WHEN.replace(year=2022)]),
        (
            "What setback did she face in October 2023?",
            [WHEN.replace(day=1)],
            [WHEN.replace(month=11)],
        ),
        (
            "When did they go camping in October?",
            [WHEN.replace(year=2019)],
            [WHEN.replace(month=9)],
        ),
        ("How often did she swim during 2023?", [WHEN.replace(month=1)], [WHEN.replace(year=2024)]),
    ],
)
def test_dates_a_query_names(text: str, inside: list[datetime], outside: list[datetime]) -> None:
    spans = dates.windows(text)
    assert spans, text
    assert all(any(w.holds(t) for w in spans) for t in inside)
    assert not any(w.holds(t) for w in spans for t in outside)


def test_a_query_without_an_absolute_date_names_none() -> None:
    for text in ("what did we do last year?", "May I ask where she lives?", "room 2023"):
        assert dates.windows(text) == []
    (month,) = dates.windows("on 30 February 2023")  # no such day: the month it names
    assert month.holds(datetime(2023, 2, 14, tzinfo=UTC))


@given(st.text(max_size=80))
def test_dates_never_fail_on_any_text(text: str) -> None:
    assert all(isinstance(w, dates.Window) for w in dates.windows(text))
