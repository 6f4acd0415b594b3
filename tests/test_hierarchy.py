"""The fractal memory through HTTP: consolidation, the tree, links, graph, zoom."""

from __future__ import annotations

import time
from typing import Any

import pytest

from somafractalmemory.summaries.extractive import sentences
from tests.conftest import Api
from tests.test_search import ids, search, store

DAY1 = "2024-03-04T09:00:00Z"
DAY3 = "2024-03-06T09:00:00Z"
TRAVEL = [
    "I booked a flight to Paris for the design conference in May.",
    "The Paris hotel for the conference is two streets from the Louvre.",
    "Our Paris trip includes a day visiting the Louvre and Montmartre.",
]
BAKING = [
    "I baked sourdough bread with a new rye starter this morning.",
    "The rye sourdough loaf needed two more hours to rise in the cold kitchen.",
    "Next time the sourdough starter gets more flour and a warmer spot.",
]


def at(day: str, minute: int) -> str:
    return day.replace("09:00", f"09:{minute:02d}")


def store_day(api: Api, namespace: str, day: str = DAY1, tag: str = "") -> dict[str, list[str]]:
    stored: dict[str, list[str]] = {"travel": [], "baking": []}
    # Interleaved in time, as a day goes: grouping must separate them by meaning.
    for n, (trip, bread) in enumerate(zip(TRAVEL, BAKING, strict=True)):
        stored["travel"].append(store(api, namespace, trip + tag, created_at=at(day, 2 * n)))
        importance = 0.2 + n / 10
        stored["baking"].append(
            store(api, namespace, bread + tag, created_at=at(day, 2 * n + 1), importance=importance)
        )
    return stored


def consolidate(api: Api, namespace: str, **fields: Any) -> dict[str, Any]:
    job = api.ok("POST", "/memory/consolidate", {"namespace": namespace, "wait": True, **fields})
    assert job["status"] == "succeeded", job
    result: dict[str, Any] = job["result"]
    return result


def parents_of(api: Api, memory_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.ok("GET", f"/memory/{memory_id}/parents")["memories"]
    return found


def children_of(api: Api, memory_id: str) -> list[str]:
    return [m["id"] for m in api.ok("GET", f"/memory/{memory_id}/children")["memories"]]


def listed(api: Api, namespace: str, kind: str) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = api.ok("GET", "/memory", namespace=namespace, type=kind)[
        "memories"
    ]
    return page


def test_consolidation_builds_the_tree_and_reruns_change_nothing(api: Api, namespace: str) -> None:
    monday = store_day(api, namespace)
    wednesday = store_day(api, namespace, DAY3, " (Wednesday)")
    result = consolidate(api, namespace)
    # Two days (more than the one-day window apart), two topics: four semantic memories.
    assert result["levels"][0]["created"] == 4
    semantic = listed(api, namespace, "semantic")
    assert len(semantic) == 4
    tops = {}
    for topic in ("travel", "baking"):
        days = []
        for stored in (monday, wednesday):
            (parent,) = {p["id"] for e in stored[topic] for p in parents_of(api, e)}
            assert sorted(children_of(api, parent)) == sorted(stored[topic])
            days.append(parent)
        # The same topic on both days (within a week): one summary above them.
        (top,) = {p["id"] for d in days for p in parents_of(api, d)}
        assert sorted(children_of(api, top)) == sorted(days)
        tops[topic] = top
    bread = api.ok("GET", f"/memory/{parents_of(api, monday['baking'][0])[0]['id']}")
    assert bread["type"] == "semantic" and bread["level"] == 1
    # Extractive: its sentences are the children's; time span and importance derive.
    assert all(s.strip(" .") in " ".join(BAKING) for s in bread["content"].split(". "))
    assert bread["importance"] == pytest.approx(0.4)
    assert bread["created_at"].startswith("2024-03-04T09:01")
    assert bread["span_end"].startswith("2024-03-04T09:05")
    summaries = listed(api, namespace, "summary")
    assert {s["id"] for s in summaries} == set(tops.values())
    assert {s["level"] for s in summaries} == {2}
    # Travel and baking are unrelated: nothing merges at level 2, the climb ends.
    assert [r["level"] for r in result["levels"]] == [0, 1, 2]
    assert result["levels"][2]["created"] == 0

    again = consolidate(api, namespace)
    assert again["created"] == 0 and again["updated"] == 0 and again["refreshed"] == 0
    assert {p["id"] for p in listed(api, namespace, "semantic")} == {p["id"] for p in semantic}
    assert api.ok("GET", f"/memory/{bread['id']}")["content"] == bread["content"]


def test_new_and_changed_episodes_fold_in_incrementally(api: Api, namespace: str) -> None:
    stored = store_day(api, namespace)
    consolidate(api, namespace)
    (trip,) = parents_of(api, stored["travel"][0])
    late = store(
        api,
        namespace,
        "We land in Paris the evening before the conference starts.",
        created_at=at(DAY1, 30),
    )
    result = consolidate(api, namespace)
    assert result["levels"][0] == {
        "level": 0,
        "considered": 1,
        "created": 0,
        "updated": 1,
        "folded": 1,
    }
    assert late in children_of(api, trip["id"])
    assert len(listed(api, namespace, "semantic")) == 2

    moved = "The Paris hotel moved: we now stay in Montmartre near the Louvre."
    api.ok("PATCH", f"/memory/{stored['travel'][1]}", {"content": moved})
    changed = consolidate(api, namespace)
    assert changed["refreshed"] >= 1 and changed["created"] == 0


def test_deleting_children_resummarizes_then_removes_the_parent(api: Api, namespace: str) -> None:
    monday = store_day(api, namespace)
    wednesday = store_day(api, namespace, DAY3, " (Wednesday)")
    consolidate(api, namespace)
    (bread,) = parents_of(api, monday["baking"][0])
    (top,) = parents_of(api, bread["id"])
    first, *rest = monday["baking"]
    api.ok("DELETE", f"/memory/{first}")
    after = api.ok("GET", f"/memory/{bread['id']}")
    assert sorted(children_of(api, bread["id"])) == sorted(rest)
    assert "baked sourdough bread with a new rye starter" not in after["content"]
    for episode in rest:
        api.ok("DELETE", f"/memory/{episode}")
    assert api.error(404, "GET", f"/memory/{bread['id']}") == "memory_not_found"
    # The summary lost a child: it now stands for Wednesday's baking alone.
    (left,) = children_of(api, top["id"])
    assert left == parents_of(api, wednesday["baking"][0])[0]["id"]
    remaining = sentences(api.ok("GET", f"/memory/{left}")["content"])
    assert set(sentences(api.ok("GET", f"/memory/{top['id']}")["content"])) <= set(remaining)
    for episode in wednesday["baking"]:
        api.ok("DELETE", f"/memory/{episode}")
    assert api.error(404, "GET", f"/memory/{top['id']}") == "memory_not_found"
    assert len(listed(api, namespace, "semantic")) == 2  # both travel days remain


@pytest.mark.django_db(transaction=True)
def test_consolidation_runs_as_a_job() -> None:
    api = Api()
    namespace = f"job-{time.monotonic_ns()}"
    store_day(api, namespace)
    response = api.call("POST", "/memory/consolidate", {"namespace": namespace})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "running", "succeeded") and job["kind"] == "consolidate"
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = api.ok("GET", f"/jobs/{job['id']}")
    assert job["status"] == "succeeded" and job["result"]["created"] == 2
    assert job["progress"]["stage"].endswith("done")
    assert api.error(404, "GET", "/jobs/job_missing") == "job_not_found"


def test_search_expands_hits_and_zooms_from_summaries_to_episodes(api: Api, namespace: str) -> None:
    stored = store_day(api, namespace)
    consolidate(api, namespace)
    expanded = search(
        api, namespace, "sourdough rye starter", types=["semantic"], expand="children"
    )
    top = expanded["memories"][0]
    assert top["level"] == 1
    assert sorted(c["id"] for c in top["children"]) == sorted(stored["baking"])
    up = search(api, namespace, "flight to Paris", types=["episodic"], expand="parents")
    assert up["memories"][0]["parents"][0]["type"] == "semantic"

    # By default search leaves out what consolidation made (LoCoMo: flat search finds more
    # evidence turns); `levels` or `types` bring it in.
    plain = search(api, namespace, "sourdough rye starter", top_k=20)
    assert {m["level"] for m in plain["memories"]} == {0}
    assert {m["level"] for m in search(api, namespace, "sourdough", levels=[1])["memories"]} == {1}
    zoomed = search(api, namespace, "Louvre visit", zoom=True, top_k=5)
    assert set(ids(zoomed)) <= set(stored["travel"]) | set(stored["baking"])
    assert ids(zoomed)[0] in stored["travel"]
    store_day(api, namespace, DAY3, " (Wednesday)")
    consolidate(api, namespace)
    levels = search(api, namespace, "Paris", levels=[2])
    assert {m["type"] for m in levels["memories"]} == {"summary"}


def test_links_made_on_store_and_by_clients(api: Api, namespace: str) -> None:
    first = store(
        api,
        namespace,
        "The staging database password rotates every Monday.",
        created_at=at(DAY1, 0),
    )
    second = store(
        api,
        namespace,
        "The staging database password is rotated each Monday.",
        created_at=at(DAY1, 1),
    )
    other = store(api, namespace, "Lunch with Maria on Thursday at noon.", created_at=at(DAY1, 2))
    edges = {
        (e["source"], e["target"], e["kind"])
        for e in api.ok("GET", f"/memory/{second}/links")["links"]
    }
    assert (second, first, "similar") in edges and (second, first, "follows") in edges
    assert (other, second, "follows") in edges
    assert not any(e[2] == "similar" and other in e[:2] for e in edges)

    made = api.ok("POST", f"/memory/{other}/links", {"target": first, "kind": "mentions"})
    assert made == {"source": other, "target": first, "kind": "mentions", "weight": 1.0}
    graph = api.ok("GET", f"/graph/{first}", depth=1)
    assert {n["id"] for n in graph["nodes"]} == {first, second, other}
    assert graph["nodes"][0]["id"] == first and not graph["truncated"]
    only = api.ok("GET", f"/graph/{first}", depth=2, kinds="mentions")
    assert {n["id"] for n in only["nodes"]} == {first, other}
    assert [e["kind"] for e in only["edges"]] == ["mentions"]

    api.ok("DELETE", f"/memory/{other}/links?target={first}&kind=mentions")
    gone = api.error(404, "DELETE", f"/memory/{other}/links?target={first}&kind=mentions")
    assert gone == "link_not_found"
    assert api.error(422, "POST", f"/memory/{other}/links", {"target": other, "kind": "x"}) == (
        "validation_error"
    )
    assert (
        api.error(422, "POST", f"/memory/{other}/links", {"target": first, "kind": "Bad Kind"})
        == "validation_error"
    )
    assert (
        api.error(404, "POST", f"/memory/{other}/links", {"target": "mem_nope", "kind": "x"})
        == "memory_not_found"
    )
    assert api.error(422, "GET", f"/graph/{first}", depth=9) == "validation_error"
    # Deleting a memory deletes its links in both directions.
    api.ok("DELETE", f"/memory/{second}")
    left = api.ok("GET", f"/memory/{first}/links")["links"]
    assert all(second not in (e["source"], e["target"]) for e in left)


def test_scheduled_consolidation_covers_namespaces_with_new_episodes(
    api: Api, namespace: str
) -> None:
    from somafractalmemory.memories.jobs import consolidation, maintenance

    store_day(api, namespace)
    assert ("default", namespace) in consolidation.namespaces_to_consolidate()
    assert maintenance.consolidate_due() >= 1
    assert len(listed(api, namespace, "semantic")) == 2
    # What remains unfolded (here: nothing) is all a later run looks at.
    assert consolidate(api, namespace)["created"] == 0


def test_memories_left_alone_are_looked_at_again_only_when_something_new_arrives(
    api: Api, namespace: str
) -> None:
    store_day(api, namespace)
    lone = store(api, namespace, "The boiler was serviced by a plumber.", created_at=at(DAY1, 7))
    first = consolidate(api, namespace)
    assert first["levels"][0]["considered"] == 7 and parents_of(api, lone) == []
    again = consolidate(api, namespace)
    assert [level["considered"] for level in again["levels"]] == [0] * len(again["levels"])
    store(
        api,
        namespace,
        "The plumber will service the boiler again next year.",
        created_at=at(DAY1, 8),
    )
    later = consolidate(api, namespace)
    assert later["levels"][0]["considered"] == 2  # the new one and the one left alone
    (pair,) = parents_of(api, lone)
    assert len(children_of(api, pair["id"])) == 2


@pytest.mark.django_db(transaction=True)
def test_batches_link_within_the_batch_at_once_and_to_the_index_soon_after() -> None:
    from django.db import connection

    if connection.vendor == "sqlite":
        # The link thread writes while this thread reads: the in-memory SQLite of the test
        # run locks whole tables for that (the service's SQLite is a WAL file with a busy
        # timeout), and the thread's best-effort insert gives up. Covered by the PostgreSQL run.
        pytest.skip("background writer on in-memory SQLite; covered by the PostgreSQL run")
    api = Api()
    namespace = f"batch-{time.monotonic_ns()}"
    old = store(api, namespace, "The staging database password rotates every Monday.")
    body = {
        "memories": [
            {
                "content": "The staging database password is rotated each Monday.",
                "namespace": namespace,
            },
            {"content": "Staging database passwords rotate on Mondays.", "namespace": namespace},
        ]
    }
    first, second = (m["id"] for m in api.ok("POST", "/memory/batch", body)["memories"])

    def similar(memory_id: str) -> set[str]:
        # The link thread writes meanwhile; the in-memory SQLite of the test run locks whole
        # tables for that (503 database_unavailable), which the service's WAL file does not.
        for _ in range(50):
            response = api.call("GET", f"/memory/{memory_id}/links", kinds="similar")
            if response.status_code != 503:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.content
        return {e["target"] for e in response.json()["links"] if e["source"] == memory_id}

    assert second in similar(first)  # within the batch: made with the store
    deadline = time.monotonic() + 30
    while old not in similar(first):  # to the index: by the link thread, shortly after
        assert time.monotonic() < deadline, similar(first)
        time.sleep(0.1)
    assert old in similar(second)


def test_a_parent_deleted_while_it_is_refreshed_stays_deleted(
    api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from somafractalmemory.memories import services, tree

    stored = store_day(api, namespace)
    consolidate(api, namespace)
    (parent,) = parents_of(api, stored["baking"][0])
    original = tree.save_parents

    def delete_first(tenant: str, made: Any) -> Any:
        services.delete(parent["id"], tenant=tenant)  # a client's DELETE commits first
        return original(tenant, made)

    monkeypatch.setattr(tree, "save_parents", delete_first)
    api.ok("DELETE", f"/memory/{stored['baking'][0]}")
    monkeypatch.undo()
    assert api.error(404, "GET", f"/memory/{parent['id']}") == "memory_not_found"


def test_children_vanishing_during_a_refresh_remove_the_parent(
    api: Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from somafractalmemory.memories import links
    from somafractalmemory.memories.models import Memory

    stored = store_day(api, namespace)
    consolidate(api, namespace)
    (parent,) = parents_of(api, stored["baking"][0])
    original = links.child_ids

    def racing(ids: Any) -> Any:
        found = original(ids)  # then concurrent requests delete those children
        Memory.objects.filter(id__in=[c for cs in found.values() for c in cs]).delete()
        return found

    monkeypatch.setattr(links, "child_ids", racing)
    api.ok("DELETE", f"/memory/{stored['baking'][0]}")
    monkeypatch.undo()
    assert api.error(404, "GET", f"/memory/{parent['id']}") == "memory_not_found"
