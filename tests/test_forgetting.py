"""Decay maths (property tests) and forgetting through HTTP: archive, restore, retention."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from somafractalmemory.retrieval.ranking import (
    DAY,
    forgettable,
    retention,
    stability_seconds,
)
from tests.conftest import Api
from tests.test_search import ids, search, store

ages = st.floats(0, 1e10)
half_lives = st.floats(DAY, 1000 * DAY)
unit = st.floats(0, 1)
strengths = st.floats(1, 100)


@given(ages, ages, half_lives, unit, strengths)
def test_retention_fades_with_time(a: float, b: float, half: float, imp: float, s: float) -> None:
    young, old = sorted((a, b))
    assert 0.0 <= retention(old, half, imp, s) <= retention(young, half, imp, s) <= 1.0
    assert retention(0.0, half, imp, s) == 1.0


@given(ages, half_lives, unit, unit, strengths, strengths)
def test_importance_and_recall_slow_forgetting(
    age: float, half: float, i: float, j: float, s: float, t: float
) -> None:
    low, high = sorted((i, j))
    weak, strong = sorted((s, t))
    assert retention(age, half, low, weak) <= retention(age, half, high, weak)
    assert retention(age, half, low, weak) <= retention(age, half, low, strong)


@given(half_lives, unit, strengths)
def test_retention_halves_after_one_stability(half: float, imp: float, s: float) -> None:
    stability = stability_seconds(half, imp, s)
    assert retention(stability, half, imp, s) == pytest.approx(0.5)
    assert retention(2 * stability, half, imp, s) == pytest.approx(0.25)
    # Importance 1 lasts five times as long as importance 0.
    assert stability_seconds(half, 1.0, s) == pytest.approx(5 * stability_seconds(half, 0.0, s))


@given(unit, unit)
def test_only_faded_and_unimportant_memories_are_forgettable(kept: float, imp: float) -> None:
    assert forgettable(kept, imp, threshold=0.05, floor=0.7) == (kept < 0.05 and imp < 0.7)


def test_forgetting_archives_faded_memories_and_restore_brings_them_back(
    api: Api, namespace: str
) -> None:
    old = store(
        api,
        namespace,
        "The office wifi password was tulip-42 in 1998.",
        created_at="1998-05-01T10:00:00Z",
        importance=0.1,
    )
    vital = store(
        api,
        namespace,
        "The office alarm code was 7731 in 1998.",
        created_at="1998-05-01T11:00:00Z",
        importance=0.9,
    )
    fresh = store(api, namespace, "The office wifi password is now lilac-77.", importance=0.1)

    body = {"namespace": namespace, "wait": True, "dry_run": True}
    dry = api.ok("POST", "/memory/forget", body)["result"]
    assert dry["archived"] == 1 and dry["dry_run"] and dry["sample"][0]["id"] == old
    assert dry["sample"][0]["retention"] < 0.05
    assert old in ids(search(api, namespace, "office wifi password"))

    done = api.ok("POST", "/memory/forget", {**body, "dry_run": False})
    assert done["status"] == "succeeded" and done["result"]["archived"] == 1
    found = ids(search(api, namespace, "office wifi password", mode="vector"))
    assert old not in found and fresh in found and vital in ids(search(api, namespace, "alarm"))
    assert old not in ids(search(api, namespace, "tulip-42", mode="lexical"))
    held = api.ok("GET", f"/memory/{old}")
    assert held["archived_at"] is not None and held["content"].startswith("The office wifi")
    assert [m["id"] for m in api.ok("GET", "/memory", namespace=namespace)["memories"]] == [
        fresh,
        vital,
    ]
    archived = api.ok("GET", "/memory", namespace=namespace, archived="true")["memories"]
    assert [m["id"] for m in archived] == [old]

    restored = api.ok("POST", f"/memory/{old}/restore")
    assert restored["archived_at"] is None
    assert old in ids(search(api, namespace, "tulip-42", mode="lexical"))
    hit = search(api, namespace, "tulip-42", mode="lexical", explain=True)["memories"][0]
    assert hit["id"] == old and hit["explain"]["retention"] > 0.99  # restored = just recalled
    assert api.error(404, "POST", "/memory/mem_missing/restore") == "memory_not_found"
    again = api.ok("POST", "/memory/forget", {"namespace": namespace, "wait": True})
    assert again["result"]["archived"] == 0
