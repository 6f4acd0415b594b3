"""Search options through HTTP: modes, explain, types, time range, min_score, weights."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction

from somafractalmemory.memories import recall
from somafractalmemory.memories.models import Memory
from tests.conftest import Api


def store(api: Api, namespace: str, content: str, **fields: Any) -> str:
    body = {"content": content, "namespace": namespace, **fields}
    return str(api.ok("POST", "/memory/store", body)["id"])


def search(api: Api, namespace: str, query: str, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = api.ok(
        "POST", "/memory/search", {"query": query, "namespace": namespace, **fields}
    )
    return result


def ids(result: dict[str, Any]) -> list[str]:
    return [m["id"] for m in result["memories"]]


def test_modes_find_by_words_by_meaning_and_both(api: Api, namespace: str) -> None:
    code = store(api, namespace, "Server password rotation ticket XK-4471 is due Friday")
    pet = store(api, namespace, "My dog loves chasing tennis balls", created_at="2001-01-01")
    report = store(api, namespace, "The quarterly report needs two more charts")

    lexical = search(api, namespace, "XK-4471", mode="lexical", explain=True)
    assert lexical["mode"] == "lexical" and ids(lexical)[0] == code
    # The next episode shares no word with the query: it matches only through its context
    # (itself with its neighbours), below the memory that holds the words.
    assert ids(lexical) == [code, report]
    assert set(lexical["memories"][1]["explain"]["legs"]) == {"context_lexical"}
    assert pet not in ids(lexical)
    # And the earlier episode's context was refreshed when the later one arrived.
    charts = search(api, namespace, "charts", mode="lexical", explain=True)
    assert ids(charts) == [report, code]
    assert set(charts["memories"][1]["explain"]["legs"]) == {"context_lexical"}

    vector = search(api, namespace, "which animal plays fetch outdoors?", mode="vector")
    assert vector["mode"] == "vector" and vector["memories"][0]["id"] == pet
    assert len(vector["memories"]) == 3  # dense search ranks everything

    hybrid = search(api, namespace, "which animal plays fetch outdoors?")
    assert hybrid["mode"] == "hybrid" and hybrid["memories"][0]["id"] == pet
    assert search(api, namespace, "XK-4471")["memories"][0]["id"] == code


def test_lexical_leg_stems_and_ignores_stop_words(api: Api, namespace: str) -> None:
    runs = store(api, namespace, "She was running marathons every spring")
    store(api, namespace, "The and of to in", created_at="2001-01-01")  # no neighbour
    hits = search(api, namespace, "the runner runs", mode="lexical")["memories"]
    assert [h["id"] for h in hits] == [runs]


def test_sql_full_text_serves_both_lexical_legs(
    api: Api, namespace: str, settings_env: Any
) -> None:
    """`lexical_engine: sql` (what a Milvus server without BM25 gets): the lexical leg and the
    context-lexical leg (the `context_tokens` written with each vector) come from SQL."""
    settings_env(lexical_engine="sql")
    code = store(api, namespace, "Server password rotation ticket XK-4471 is due Friday")
    report = store(api, namespace, "The quarterly report needs two more charts")
    found = search(api, namespace, "XK-4471", mode="lexical", explain=True)
    assert ids(found) == [code, report]
    assert set(found["memories"][0]["explain"]["legs"]) == {"lexical", "context_lexical"}
    assert set(found["memories"][1]["explain"]["legs"]) == {"context_lexical"}
    assert Memory.objects.get(id=code).context_tokens  # written with the vector


@pytest.mark.django_db(transaction=True)
def test_sql_lexical_legs_run_at_once_off_the_request_thread(
    api: Api, namespace: str, settings_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a transaction the two SQL legs run on the leg pool, each on its own
    connection, while the query is embedded; inside one (as the other tests run) they run on
    the caller's thread, whose uncommitted rows other connections cannot see; so they do on
    an in-memory SQLite database (this suite's), whose shared cache locks tables against
    other connections. Same answer."""
    memory_db = connection.vendor == "sqlite"  # the suite's SQLite is in memory
    settings_env(lexical_engine="sql")
    code = store(api, namespace, "Server password rotation ticket XK-4471 is due Friday")
    report = store(api, namespace, "The quarterly report needs two more charts")
    threads: list[str] = []
    real = recall._sql_lexical

    def spied(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(recall, "_sql_lexical", spied)
    answers = []
    for in_transaction in (False, True):
        threads.clear()
        with transaction.atomic() if in_transaction else contextlib.nullcontext():
            answers.append(search(api, namespace, "XK-4471 charts", explain=True))
        caller = threading.current_thread().name
        here = in_transaction or memory_db
        assert len(threads) == 2 and all((t == caller) == here for t in threads)
    assert ids(answers[0]) == ids(answers[1]) and set(ids(answers[0])) == {code, report}
    assert [m["explain"]["legs"] for m in answers[0]["memories"]] == [
        m["explain"]["legs"] for m in answers[1]["memories"]
    ]


def test_explain_returns_each_component(api: Api, namespace: str) -> None:
    target = store(api, namespace, "Lisa's birthday party is on the 3rd of May", importance=0.9)
    store(api, namespace, "Buy oat milk and bread")
    result = search(api, namespace, "when is Lisa's birthday?", explain=True)
    top = result["memories"][0]
    assert top["id"] == target
    parts = top["explain"]
    assert set(parts["legs"]) == {"vector", "lexical", "context_vector", "context_lexical"}
    assert parts["legs"]["vector"]["rank"] == 1 and parts["legs"]["lexical"]["rank"] == 1
    assert parts["importance"] == 0.9 and 0.99 <= parts["recency"] <= 1.0
    w = parts["weights"]
    expected = w["relevance"] * parts["relevance"] + w["recency"] * parts["recency"]
    expected += w["importance"] * parts["importance"]
    assert abs(top["score"] - round(expected, 4)) < 1e-3
    assert search(api, namespace, "birthday")["memories"][0]["explain"] is None


def test_weights_and_half_lives_per_request(api: Api, namespace: str) -> None:
    old = store(
        api, namespace, "Weekly sync notes: budget approved", created_at="2020-01-01T00:00:00Z"
    )
    new = store(api, namespace, "Weekly sync notes: budget approved again")
    only_relevance = {"relevance": 1, "recency": 0, "importance": 0}
    recent_first = {"relevance": 0.2, "recency": 0.8, "importance": 0}
    by_recency = search(api, namespace, "weekly sync budget", weights=recent_first, explain=True)
    assert by_recency["memories"][0]["id"] == new
    assert by_recency["memories"][1]["explain"]["recency"] < 0.01
    long_memory = search(
        api,
        namespace,
        "weekly sync budget",
        weights=recent_first,
        half_lives={"episodic": 100_000},
        explain=True,
    )
    assert long_memory["memories"][1]["explain"]["recency"] > 0.9
    ids = {m["id"] for m in search(api, namespace, "budget", weights=only_relevance)["memories"]}
    assert ids == {old, new}


def test_types_time_range_and_min_score(api: Api, namespace: str) -> None:
    episode = store(
        api, namespace, "Lunch with Sam at the noodle bar", created_at="2024-05-01T12:00:00Z"
    )
    fact = store(
        api, namespace, "Sam is vegetarian", type="semantic", created_at="2024-06-01T12:00:00Z"
    )
    summary = store(api, namespace, "Sam and I meet monthly for lunch", type="summary")
    assert [m["id"] for m in search(api, namespace, "Sam", types=["semantic"])["memories"]] == [
        fact
    ]
    two = {
        m["id"] for m in search(api, namespace, "Sam", types=["episodic", "summary"])["memories"]
    }
    assert two == {episode, summary}
    ranged = search(
        api,
        namespace,
        "Sam lunch",
        created_after="2024-04-01T00:00:00Z",
        created_before="2024-05-15T00:00:00Z",
    )
    assert [m["id"] for m in ranged["memories"]] == [episode]
    # A floor halfway between the best two scores keeps only the best. (The best score
    # itself is no floor: it is rounded, and recency keeps decaying between two searches.)
    first, second = search(api, namespace, "Sam")["memories"][:2]
    assert first["score"] - second["score"] > 0.01
    floor = (first["score"] + second["score"]) / 2
    kept = search(api, namespace, "Sam", min_score=floor)["memories"]
    assert [m["id"] for m in kept] == [first["id"]]


def test_search_options_are_validated(api: Api) -> None:
    for body in (
        {"query": "x", "mode": "psychic"},
        {"query": "x", "types": ["dream"]},
        {"query": "x", "min_score": -1},
        {"query": "x", "weights": {"relevance": -1}},
        {"query": "x", "weights": {"fun": 1}},
        {"query": "x", "half_lives": {"episodic": 0}},
        {"query": "x", "created_after": "someday"},
    ):
        assert api.error(422, "POST", "/memory/search", body) == "validation_error", body


def test_same_content_is_stored_once_unless_asked(api: Api, namespace: str) -> None:
    first = api.ok(
        "POST",
        "/memory/store",
        {"content": "Alex is allergic to cats", "namespace": namespace, "importance": 0.3},
    )
    again = api.ok(
        "POST",
        "/memory/store",
        {"content": "Alex is allergic to cats ", "namespace": namespace, "importance": 0.8},
    )
    assert again["id"] == first["id"] and again["deduplicated"] is True
    assert api.ok("GET", f"/memory/{first['id']}")["importance"] == 0.8  # raised to the max
    lower = api.ok(
        "POST",
        "/memory/store",
        {"content": "Alex is allergic to cats", "namespace": namespace, "importance": 0.1},
    )
    assert (
        lower["id"] == first["id"] and api.ok("GET", f"/memory/{first['id']}")["importance"] == 0.8
    )
    forced = api.ok(
        "POST",
        "/memory/store",
        {"content": "Alex is allergic to cats", "namespace": namespace, "dedupe": False},
    )
    assert forced["id"] != first["id"] and forced["deduplicated"] is False
    elsewhere = api.ok(
        "POST",
        "/memory/store",
        {"content": "Alex is allergic to cats", "namespace": namespace + "-b"},
    )
    assert elsewhere["id"] != first["id"]
    hits = search(api, namespace, "who has a cat allergy?", top_k=10)["memories"]
    assert sorted(h["id"] for h in hits) == sorted([first["id"], forced["id"]])


def test_batch_deduplicates_within_and_against_the_store(api: Api, namespace: str) -> None:
    old = store(api, namespace, "The garage code is 4711")
    items = [
        {"content": c, "namespace": namespace}
        for c in ("The garage code is 4711", "Bins go out on Tuesday", "Bins go out on Tuesday")
    ]
    result = api.ok("POST", "/memory/batch", {"memories": items})["memories"]
    assert result[0]["id"] == old and result[0]["deduplicated"]
    assert (
        result[1]["id"] == result[2]["id"]
        and not result[1]["deduplicated"]
        and result[2]["deduplicated"]
    )
    assert len(api.ok("GET", "/memory", namespace=namespace)["memories"]) == 2


def test_near_duplicates_are_reported(api: Api, namespace: str) -> None:
    first = store(api, namespace, "The user prefers dark mode in every application")
    near = api.ok(
        "POST",
        "/memory/store",
        {"content": "The user prefers dark mode in every app", "namespace": namespace},
    )
    assert near["id"] != first and not near["deduplicated"]
    assert [d["id"] for d in near["near_duplicates"]] == [first]
    assert near["near_duplicates"][0]["score"] >= 0.95
    far = api.ok(
        "POST", "/memory/store", {"content": "Invoices are due on the 5th", "namespace": namespace}
    )
    assert far["near_duplicates"] == []


def test_recall_reinforces_in_batches(api: Api, namespace: str) -> None:
    from somafractalmemory.memories import services

    services.flush_reinforcements()  # start from nothing pending
    old = store(api, namespace, "Grandma's apple pie recipe uses cardamom", created_at="2015-03-01")
    other = store(api, namespace, "The bike needs new brake pads", created_at="2015-03-09")
    before = search(api, namespace, "apple pie recipe", explain=True, top_k=1)
    assert [h["id"] for h in before["memories"]] == [old]
    assert before["memories"][0]["explain"]["recency"] < 0.01
    assert api.ok("GET", f"/memory/{old}")["access_count"] == 0  # not yet written
    assert services.flush_reinforcements() == 1  # the search hit and the read: one memory
    memory = api.ok("GET", f"/memory/{old}")
    assert memory["access_count"] == 2 and memory["strength"] == 2.0
    assert memory["last_accessed_at"] is not None
    assert api.ok("GET", f"/memory/{other}")["access_count"] == 0
    after = search(api, namespace, "apple pie recipe", explain=True, top_k=1)
    assert after["memories"][0]["explain"]["recency"] > 0.99  # counted from the last recall
    services.flush_reinforcements()
    # A read that must not change later rankings: not counted.
    peek = search(api, namespace, "brake pads", top_k=1, reinforce=False)
    assert [h["id"] for h in peek["memories"]] == [other]
    assert services.flush_reinforcements() == 0
    assert api.ok("GET", f"/memory/{other}")["access_count"] == 1  # the GET above only


def test_deleting_an_episode_rewrites_its_neighbours_context(api: Api, namespace: str) -> None:
    first = store(api, namespace, "We booked the cabin by the lake")
    middle = store(api, namespace, "The canoe rental closes at sunset")
    last = store(api, namespace, "Dinner was grilled trout")
    context_hits = ids(search(api, namespace, "canoe rental", mode="lexical"))
    assert context_hits[0] == middle and {first, last} <= set(context_hits)
    api.ok("DELETE", f"/memory/{middle}")
    assert ids(search(api, namespace, "canoe rental", mode="lexical")) == []
    # The two remaining episodes are now each other's neighbours.
    assert ids(search(api, namespace, "trout", mode="lexical")) == [last, first]


def test_a_batch_reads_only_the_neighbourhoods_of_its_episodes(api: Api, namespace: str) -> None:
    """A batch spread over a year rewrites the contexts next to its episodes, reading those
    neighbourhoods alone: an episode months from any of them is neither read nor changed."""
    from somafractalmemory.memories import indexing

    between = store(api, namespace, "The attic was insulated in June", created_at="2020-06-01")
    batch = [
        ("We booked the cabin by the lake", "2020-01-01T10:00:00Z"),
        ("The canoe rental closes at sunset", "2020-01-01T10:01:00Z"),
        ("Dinner was grilled trout", "2021-01-01T10:00:00Z"),
    ]
    stored = api.ok(
        "POST",
        "/memory/batch",
        {
            "memories": [
                {"content": text, "namespace": namespace, "created_at": when}
                for text, when in batch
            ]
        },
    )
    cabin, canoe, trout = (m["id"] for m in stored["memories"])
    times = [datetime.fromisoformat(when) for _, when in batch]
    window = timedelta(seconds=3600)
    tenant = Memory.objects.get(id=cabin).tenant_id
    read = [
        m.id for part in indexing.episodes_around(tenant, namespace, times, window) for m in part
    ]
    assert read == [cabin, canoe, trout]
    # The neighbours' contexts are right: the canoe episode is in the cabin's, not in the
    # trout's (a year apart), nor the attic's (months from both).
    assert set(ids(search(api, namespace, "canoe rental", mode="lexical"))) == {canoe, cabin}
    assert ids(search(api, namespace, "attic insulated", mode="lexical")) == [between]


@pytest.mark.django_db
def test_episode_reads_seek_their_time_ranges_in_the_index() -> None:
    """The reads around a batch's episodes (contexts, and `follows` links) seek each time
    range in the (tenant, namespace, level, created_at) index: with the tenant and type
    alone SQLite walked every episode of the tenant, a million rows per batch at 1M."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner; PostgreSQL plans from its statistics")
    from somafractalmemory.memories import indexing, linking

    day = datetime(2020, 1, 1, tzinfo=UTC)
    reads = [
        *indexing.episodes_around("t", "n", [day, day + timedelta(days=30)], timedelta(hours=1)),
        *linking.episode_reads("t", "n", day, day + timedelta(days=1)),
    ]
    for read in reads:
        sql, params = read.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = " ".join(row[-1] for row in cursor.fetchall())
        assert "USING INDEX mem_level" in plan and "created_at" in plan, plan
        assert "mem_type" not in plan, plan


def test_episode_ranges_merge_what_overlaps() -> None:
    from somafractalmemory.memories.indexing import episode_ranges

    day = datetime(2020, 1, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert episode_ranges([day + 3 * hour, day, day + 100 * hour], hour) == [
        (day - 2 * hour, day + 5 * hour),
        (day + 98 * hour, day + 102 * hour),
    ]
    assert episode_ranges([], hour) == []


def test_filters_apply_inside_every_leg(api: Api, namespace: str) -> None:
    """Far better matches that fail the filter never crowd out the ones that pass it."""
    for i in range(25):
        store(api, namespace, f"Invoice {i} for the kitchen renovation", metadata={"paid": False})
    paid = store(api, namespace, "Invoice for the garden shed", metadata={"paid": True})
    for mode in ("hybrid", "vector", "lexical"):
        hits = search(
            api, namespace, "kitchen renovation invoice", mode=mode, top_k=1, filters={"paid": True}
        )
        assert ids(hits) == [paid], mode


def test_hits_are_read_in_two_queries_and_only_the_top_k_opened(api: Api, namespace: str) -> None:
    from django.test.utils import CaptureQueriesContext

    from somafractalmemory.memories import services

    for n in range(15):
        store(api, namespace, f"Harbour log {n}: the ferry to the island left at {n + 6} am.")
    query = services.Query(namespace=namespace, top_k=3)
    services.recall("when did the island ferry leave?", query)  # warm: the query vector cached
    with CaptureQueriesContext(connection) as captured:
        found = services.recall("when did the island ferry leave?", query)
    # (Where SQL full text serves the lexical legs, their two queries come first.)
    reads = [
        q["sql"]
        for q in captured
        if 'FROM "memories_memory"' in q["sql"]
        and "tsvector" not in q["sql"]
        and "_fts" not in q["sql"]
    ]
    assert len(found.hits) == 3
    assert len(reads) == 2, reads  # candidates for ranking, then the top k: no N+1
    assert '"content"' not in reads[0]  # ranking reads nothing sealed
    assert '"content"' in reads[1]
    assert all(h.memory.content.startswith("Harbour log") for h in found.hits)


def test_search_of_an_empty_store_is_hybrid_and_finds_nothing(fresh_index: Any, db: None) -> None:
    from somafractalmemory.memories import services

    found = services.recall("anything at all")
    assert found.hits == [] and found.mode == "hybrid" and found.warnings == []


def test_a_query_naming_a_speaker_ranks_what_they_said_higher(api: Api, namespace: str) -> None:
    # Bob's memory holds more of the query's words; Alice is the one the question names.
    # The names are in metadata only, so only the speaker signal can tell them apart.
    bob = store(
        api, namespace, "The ferry to the island was late again", metadata={"speaker": "Bob"}
    )
    alice = store(api, namespace, "Our boat was late", metadata={"speaker": "Alice"})
    store(api, namespace, "The weather was fine all week", metadata={"speaker": "Carol"})

    words = "the ferry to the island, late again"
    assert ids(search(api, namespace, words))[0] == bob
    assert ids(search(api, namespace, f"what did Alice say of {words}?"))[:2] == [alice, bob]
    assert ids(search(api, namespace, f"did Bob say {words}?"))[:2] == [bob, alice]
    # A soft signal, not a filter: the others' memories are still found.
    assert {bob, alice} <= set(ids(search(api, namespace, f"what did Carol say of {words}?")))

    # The speaker is stored keyed (no plaintext name), and follows a metadata change.
    column = Memory.objects.get(id=alice).speaker
    assert column and "alice" not in column.lower() and len(column.split()) == 1
    api.ok("PATCH", f"/memory/{alice}", {"metadata": {"speaker": "Dora"}})
    assert Memory.objects.get(id=alice).speaker != column
    assert ids(search(api, namespace, f"what did Alice say of {words}?"))[0] == bob
    assert ids(search(api, namespace, f"what did Dora say of {words}?"))[0] == alice


def test_the_speaker_migration_fills_the_memories_stored_before_it(
    api: Api, namespace: str
) -> None:
    import importlib

    from django.apps import apps

    from somafractalmemory.memories import identity

    said = store(api, namespace, "Lunch at noon", metadata={"speaker": "Maria", "topic": "food"})
    plain = store(api, namespace, "Dinner at eight", metadata={"topic": "food"})
    Memory.objects.filter(id__in=[said, plain]).update(speaker="")  # as 0009 left them
    migration = importlib.import_module("somafractalmemory.memories.migrations.0010_speaker")
    migration.fill_speakers(apps, None)
    rows = dict(Memory.objects.filter(id__in=[said, plain]).values_list("id", "speaker"))
    assert rows == {
        said: identity.speaker_tokens({"speaker": "Maria"}, "default"),
        plain: "",
    }
    assert rows[said]


def test_episodes_of_one_sitting_lift_each_other_in_a_full_pool(api: Api, namespace: str) -> None:
    """Ranking reads each candidate's event time: three matches within an hour of each
    other outrank a better lone match from another day, once a leg came back full (the
    store held more candidates than the pool); an episode made a semantic memory is in no
    sitting, and a zero share leaves the fused order."""
    from somafractalmemory.memories import services
    from somafractalmemory.retrieval import ranking
    from somafractalmemory.vectors.base import VectorHit

    day = "2024-03-0{}T10:{:02d}:00Z"
    alone = store(api, namespace, "lone", created_at=day.format(1, 0))
    first, second, third = (
        store(api, namespace, f"sat {n}", created_at=day.format(5, 20 * n)) for n in range(3)
    )
    ranked = [alone, first, second, third]
    pool = recall.candidate_pool(10)
    gone = [f"mem_gone{n}" for n in range(pool - len(ranked))]  # no rows: dropped by SQL
    full = {leg: [VectorHit(i, 1.0) for i in ranked + gone] for leg in ("vector", "lexical")}
    short = {leg: [VectorHit(i, 1.0) for i in ranked] for leg in ("vector", "lexical")}
    query = services.Query(namespace=namespace)

    def order(legs: dict[str, list[VectorHit]], query: services.Query = query) -> list[str]:
        return [h.memory.id for h in recall._score(legs, query, "default", frozenset())[0]]

    assert order(full) == [first, second, third, alone]
    assert order(short)[0] == alone  # a small store: no lift
    flat = ranking.Scoring(fusion=ranking.Fusion(sitting=0.0))
    assert order(full, services.Query(namespace=namespace, scoring=flat))[0] == alone
    Memory.objects.filter(id__in=[first, second, third]).update(type="semantic")
    assert order(full)[0] == alone


def test_a_query_naming_a_date_ranks_what_happened_then_higher(api: Api, namespace: str) -> None:
    may = store(api, namespace, "Dinner with Sam at the noodle bar", created_at="2024-05-03T19:00Z")
    july = store(
        api, namespace, "Dinner with Sam at the noodle bar again", created_at="2024-07-10T19:00Z"
    )
    words = "dinner with Sam at the noodle bar"
    plain = ids(search(api, namespace, words))
    assert set(plain) == {may, july}  # without a date one of them leads: the other flips
    assert ids(search(api, namespace, f"{words}, on 3 May 2024?")) == [may, july]
    assert ids(search(api, namespace, f"{words}, in May?")) == [may, july]
    assert ids(search(api, namespace, f"{words}, in July 2024?")) == [july, may]
    assert ids(search(api, namespace, f"{words}, in 2023?")) == plain  # neither: no change
