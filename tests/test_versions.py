"""Memories that change: validity in time, versions of a key, supersession, as-of queries,
expiry; against the run's real back ends (SQLite or PostgreSQL, the local engine or a
Milvus server)."""

from __future__ import annotations

import itertools
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import time_machine

from somafractalmemory.memories.models import Memory
from tests.conftest import MILVUS_SERVER, Api, Live
from tests.test_search import ids, search

T1, T2, T3 = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z", "2025-01-01T00:00:00Z"


def put(api: Api, namespace: str, content: str, **fields: Any) -> dict[str, Any]:
    answer: dict[str, Any] = api.ok(
        "POST", "/memory/store", {"content": content, "namespace": namespace, **fields}
    )
    return answer


def listed(api: Api, namespace: str, **params: Any) -> list[str]:
    return [m["id"] for m in api.ok("GET", "/memory", namespace=namespace, **params)["memories"]]


def moved(api: Api, namespace: str) -> tuple[str, str, str]:
    """Alice's city, three versions of one key: Lisbon from T1, Porto from T2, Berlin from T3."""
    key = "user-alice/city"
    a = put(api, namespace, "Alice lives in Lisbon", key=key, valid_from=T1)
    b = put(api, namespace, "Alice lives in Porto", key=key, valid_from=T2)
    c = put(api, namespace, "Alice lives in Berlin", key=key, valid_from=T3)
    assert (a["supersedes"], b["supersedes"], c["supersedes"]) == ([], [a["id"]], [b["id"]])
    return a["id"], b["id"], c["id"]


def test_a_key_is_versioned_and_as_of_returns_the_version_valid_then(
    api: Api, namespace: str
) -> None:
    lisbon, porto, berlin = moved(api, namespace)
    got = {i: api.ok("GET", f"/memory/{i}") for i in (lisbon, porto, berlin)}
    assert got[lisbon]["valid_until"] == got[porto]["valid_from"]
    assert got[porto]["valid_until"] == got[berlin]["valid_from"]
    assert got[berlin]["valid_until"] is None
    assert [got[i]["status"] for i in (lisbon, porto, berlin)] == [
        "no_longer_valid",
        "no_longer_valid",
        "valid",
    ]
    instants = {
        "2023-12-31T23:59:59Z": [],
        T1: [lisbon],
        "2024-05-31T23:59:59Z": [lisbon],
        T2: [porto],
        "2024-12-31T23:59:59.999999Z": [porto],
        T3: [berlin],
        None: [berlin],  # now
    }
    for as_of, valid in instants.items():
        when = {"as_of": as_of} if as_of else {}
        found = search(api, namespace, "Where does Alice live?", **when)
        assert ids(found) == valid, as_of
        assert listed(api, namespace, **when) == valid, as_of
    # Nothing is lost: every version is fetchable, listable and in the history, in order.
    assert set(listed(api, namespace, include_invalid="true")) == {lisbon, porto, berlin}
    for one in (lisbon, porto, berlin):
        history = api.ok("GET", f"/memory/{one}/history")["memories"]
        assert [m["id"] for m in history] == [lisbon, porto, berlin]
    joined = api.ok("GET", f"/memory/{berlin}/links", kinds="supersedes")["links"]
    assert [(link["source"], link["target"]) for link in joined] == [(berlin, porto)]


def test_explain_names_what_was_hidden_and_why(api: Api, namespace: str) -> None:
    lisbon, porto, berlin = moved(api, namespace)
    found = search(api, namespace, "Where does Alice live?", explain=True)
    assert ids(found) == [berlin]
    assert found["hidden"] == sorted(
        [{"id": lisbon, "reason": "no_longer_valid"}, {"id": porto, "reason": "no_longer_valid"}],
        key=lambda h: h["id"],
    )
    early = search(api, namespace, "Where does Alice live?", explain=True, as_of="2024-03-01")
    assert ids(early) == [lisbon]
    assert {h["id"]: h["reason"] for h in early["hidden"]} == {
        porto: "not_yet_valid",
        berlin: "not_yet_valid",
    }
    assert search(api, namespace, "Alice")["hidden"] is None  # only with explain


def test_an_older_version_stored_late_lands_in_its_place(api: Api, namespace: str) -> None:
    key = "team/oncall"
    late = put(api, namespace, "Dana is on call", key=key, valid_from=T3)
    early = put(api, namespace, "Chris is on call", key=key, valid_from=T1)
    assert early["valid_until"] == late["valid_from"] and early["supersedes"] == []
    middle = put(api, namespace, "Eve is on call", key=key, valid_from=T2)
    assert middle["valid_until"] == late["valid_from"]
    assert middle["supersedes"] == [early["id"]]
    assert api.ok("GET", f"/memory/{early['id']}")["valid_until"] == middle["valid_from"]
    history = api.ok("GET", f"/memory/{late['id']}/history")["memories"]
    assert [m["id"] for m in history] == [early["id"], middle["id"], late["id"]]
    assert [m["id"] for m in history if m["valid_until"] is None] == [late["id"]]


def test_a_repeat_of_the_current_version_is_no_new_version_a_flip_back_is(
    api: Api, namespace: str
) -> None:
    key = "user-1/theme"
    dark = put(api, namespace, "The user prefers dark mode", key=key)
    again = put(api, namespace, "The user prefers dark mode", key=key)
    assert again["deduplicated"] and again["id"] == dark["id"]
    light = put(api, namespace, "The user prefers light mode", key=key)
    back = put(api, namespace, "The user prefers dark mode", key=key)
    assert not back["deduplicated"] and back["id"] != dark["id"]
    assert back["supersedes"] == [light["id"]]
    history = api.ok("GET", f"/memory/{back['id']}/history")["memories"]
    assert [m["id"] for m in history] == [dark["id"], light["id"], back["id"]]
    # A plain store of a closed version's words is new too: the old one is not valid now.
    plain = put(api, namespace, "The user prefers light mode")
    assert not plain["deduplicated"] and plain["id"] != light["id"]


def test_keys_are_isolated_by_namespace_and_tenant(api: Api, namespace: str) -> None:
    from somafractalmemory.memories import services, tenancy

    other_ns = f"{namespace}-b"
    first = put(api, namespace, "Deploys happen on Fridays", key="ops/deploy-day")
    elsewhere = put(api, other_ns, "Deploys happen on Mondays", key="ops/deploy-day")
    tenant = f"t{uuid.uuid4().hex[:8]}"
    tenancy.create_tenant(tenant)
    theirs = services.store_many(
        [
            services.NewMemory(
                "Deploys happen on Sundays", namespace=namespace, key="ops/deploy-day"
            )
        ],
        tenant=tenant,
    )[0]
    assert elsewhere["supersedes"] == [] and theirs.supersedes == []
    assert api.ok("GET", f"/memory/{first['id']}")["valid_until"] is None
    assert Memory.objects.get(id=theirs.memory.id).valid_until is None
    open_versions = Memory.objects.filter(key="ops/deploy-day", valid_until=None)
    assert {m.id for m in open_versions} >= {first["id"], elsewhere["id"], theirs.memory.id}
    assert [m["id"] for m in api.ok("GET", f"/memory/{first['id']}/history")["memories"]] == [
        first["id"]
    ]


def test_supersedes_closes_the_named_memories(api: Api, namespace: str) -> None:
    old = put(api, namespace, "The office is on Main Street", type="semantic")
    other = put(api, namespace, "Parking is behind the building")
    new = put(
        api, namespace, "The office moved to Harbour Road", type="semantic", supersedes=[old["id"]]
    )
    assert new["supersedes"] == [old["id"]]
    assert api.ok("GET", f"/memory/{old['id']}")["valid_until"] == new["valid_from"]
    assert old["id"] not in listed(api, namespace) and other["id"] in listed(api, namespace)
    history = api.ok("GET", f"/memory/{new['id']}/history")["memories"]
    assert [m["id"] for m in history] == [old["id"], new["id"]]
    # Unknown ids and other namespaces are refused, and nothing is stored.
    before = Memory.objects.filter(namespace=namespace).count()
    missing = {"content": "x y z", "namespace": namespace, "supersedes": ["mem_nope"]}
    assert api.error(404, "POST", "/memory/store", missing) == "memory_not_found"
    elsewhere = put(api, f"{namespace}-b", "Something else entirely")
    across = {"content": "x y z", "namespace": namespace, "supersedes": [elsewhere["id"]]}
    assert api.error(422, "POST", "/memory/store", across) == "validation_error"
    assert Memory.objects.filter(namespace=namespace).count() == before


@pytest.mark.parametrize(
    "fields",
    [
        {"valid_from": T2, "valid_until": T1},
        {"valid_from": T2, "valid_until": T2},
        {"expires_at": "2001-01-01T00:00:00Z"},
        {"expires_at": "2999-01-01T00:00:00Z", "ttl_seconds": 60},
    ],
)
def test_times_that_cannot_hold_are_refused(
    api: Api, namespace: str, fields: dict[str, Any]
) -> None:
    body = {"content": "Something to keep", "namespace": namespace, **fields}
    assert api.error(422, "POST", "/memory/store", body) == "invalid_validity"
    batch = {"memories": [{"content": "fine", "namespace": namespace}, body]}
    assert api.error(422, "POST", "/memory/batch", batch) == "invalid_validity"
    assert not Memory.objects.filter(namespace=namespace).exists()


def test_bad_keys_and_ttls_are_refused(api: Api, namespace: str) -> None:
    for bad in ({"key": "k" * 201}, {"ttl_seconds": 0}, {"ttl_seconds": 1.5}):
        body = {"content": "Something to keep", "namespace": namespace, **bad}
        assert api.error(422, "POST", "/memory/store", body) == "validation_error"
    body = {"content": "Something to keep", "namespace": namespace, "key": "a\nb"}
    assert api.error(422, "POST", "/memory/store", body) == "validation_error"


def test_expiry_is_exact_to_the_second_without_any_job(api: Api, namespace: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    with time_machine.travel(start, tick=False):
        brief = put(api, namespace, "The door code is 4471 today", ttl_seconds=60)
        stays = put(api, namespace, "The door code changes every day")
        assert datetime.fromisoformat(brief["expires_at"]) == start + timedelta(seconds=60)
        at = put(
            api,
            namespace,
            "Lunch is at noon",
            expires_at=(start + timedelta(seconds=30)).isoformat(),
        )
    with time_machine.travel(start + timedelta(seconds=29, microseconds=999_999), tick=False):
        assert set(ids(search(api, namespace, "door code lunch"))) == {
            brief["id"],
            stays["id"],
            at["id"],
        }
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        assert set(ids(search(api, namespace, "door code lunch"))) == {brief["id"], stays["id"]}
        assert api.ok("GET", f"/memory/{at['id']}")["status"] == "expired"
    with time_machine.travel(start + timedelta(seconds=60), tick=False):
        found = search(api, namespace, "door code lunch", explain=True)
        assert ids(found) == [stays["id"]]
        assert {h["id"]: h["reason"] for h in found["hidden"]} == {
            brief["id"]: "expired",
            at["id"]: "expired",
        }
        assert listed(api, namespace) == [stays["id"]]
        # Expired memories are gone from searches whatever instant they ask about.
        assert brief["id"] not in ids(search(api, namespace, "door code", as_of=start.isoformat()))
        assert set(listed(api, namespace, include_invalid="true")) == {
            brief["id"],
            stays["id"],
            at["id"],
        }


def test_patch_closes_a_memory_and_sets_its_expiry(api: Api, namespace: str) -> None:
    fact = put(api, namespace, "The wifi password is hunter2", valid_from=T1)
    closed = api.ok("PATCH", f"/memory/{fact['id']}", {"valid_until": T2})
    assert closed["valid_until"].startswith("2024-06-01") and closed["status"] == "no_longer_valid"
    assert listed(api, namespace) == []
    assert listed(api, namespace, as_of="2024-03-01T00:00:00Z") == [fact["id"]]
    bad = {"valid_until": "2023-01-01T00:00:00Z"}
    assert api.error(422, "PATCH", f"/memory/{fact['id']}", bad) == "invalid_validity"
    other = put(api, namespace, "The printer is on floor 2")
    timed = api.ok("PATCH", f"/memory/{other['id']}", {"ttl_seconds": 3600})
    expected = datetime.fromisoformat(timed["updated_at"]) + timedelta(hours=1)
    assert abs(datetime.fromisoformat(timed["expires_at"]) - expected) < timedelta(seconds=5)
    longer = api.ok("PATCH", f"/memory/{other['id']}", {"ttl_seconds": 7200})  # replaces it
    assert datetime.fromisoformat(longer["expires_at"]) > datetime.fromisoformat(
        timed["expires_at"]
    )
    both = {"expires_at": "2999-01-01T00:00:00Z", "ttl_seconds": 60}
    assert api.error(422, "PATCH", f"/memory/{other['id']}", both) == "invalid_validity"


def test_a_purge_erases_every_version(api: Api, namespace: str) -> None:
    lisbon, porto, berlin = moved(api, namespace)
    erased = api.ok("POST", "/memory/purge", {"namespace": namespace, "all": True})
    assert erased["memories"] == 3
    assert not Memory.objects.filter(id__in=[lisbon, porto, berlin]).exists()


def test_a_semantic_store_reports_possible_conflicts(api: Api, namespace: str) -> None:
    lisbon = put(api, namespace, "Alice lives in Lisbon", type="semantic")
    put(api, namespace, "Alice likes green tea in the morning", type="semantic")
    episode = put(api, namespace, "Alice lives in Lisbon now, she said")
    berlin = put(api, namespace, "Alice lives in Berlin", type="semantic")
    assert [c["id"] for c in berlin["possible_conflicts"]] == [lisbon["id"]]
    assert 0.7 <= berlin["possible_conflicts"][0]["score"] < 0.95
    assert api.ok("GET", f"/memory/{lisbon['id']}")["valid_until"] is None  # only reported
    assert episode["possible_conflicts"] == []  # episodes are not facts
    # A key's previous version is superseded, not in conflict.
    old = put(api, namespace, "Bob's favourite colour is blue", type="semantic", key="bob/colour")
    new = put(api, namespace, "Bob's favourite colour is green", type="semantic", key="bob/colour")
    assert new["supersedes"] == [old["id"]] and new["possible_conflicts"] == []


@pytest.mark.slow
def test_parallel_stores_of_one_key_leave_one_open_version(live: Live) -> None:
    """Eight clients store versions of one key at once (threads of one server; on the
    production stack, two worker processes on PostgreSQL): every store is acknowledged, the
    versions chain without gaps or overlaps, and exactly one is open."""
    namespace, key = f"par-{uuid.uuid4().hex[:8]}", "shared/counter"

    def client(n: int) -> list[str]:
        with httpx.Client(base_url=live.base, timeout=60) as http:
            made = []
            for k in range(5):
                body = {"content": f"counter {n}-{k}", "namespace": namespace, "key": key}
                answer = http.post("/api/v2/memory/store", json=body)
                assert answer.status_code == 200, answer.text
                made.append(answer.json()["id"])
            return made

    with ThreadPoolExecutor(8) as pool:
        stored = [i for made in pool.map(client, range(8)) for i in made]
    with httpx.Client(base_url=live.base, timeout=60) as http:
        history = http.get(f"/api/v2/memory/{stored[0]}/history").json()["memories"]
    assert sorted(m["id"] for m in history) == sorted(stored)
    assert [m["id"] for m in history if m["valid_until"] is None] == [history[-1]["id"]]
    for before, after in itertools.pairwise(history):
        assert before["valid_until"] == after["valid_from"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server with request threads (and, on the production stack, two workers)."""
    from tests.conftest import server_environment
    from tests.servers import free_port, server

    work = tmp_path_factory.mktemp("versions")
    with server_environment(work / "data") as env:
        port = free_port()
        extra = ("--threads", "8", *(("--workers", "2") if MILVUS_SERVER else ()))
        with server(env, port, work / "server.log", *extra):
            yield Live(f"http://127.0.0.1:{port}", env, work / "server.log")


def test_a_namespace_policy_gives_a_default_ttl_and_says_what_expiry_does(
    api: Api, namespace: str
) -> None:
    from somafractalmemory.memories import services

    assert api.ok("GET", f"/namespaces/{namespace}/policy") == {
        "namespace": namespace,
        "ttl_seconds": None,
        "on_expiry": "archive",
    }
    scratch = f"{namespace}-scratch"
    put_policy = {"ttl_seconds": 60, "on_expiry": "erase"}
    assert api.ok("PUT", f"/namespaces/{scratch}/policy", put_policy)["ttl_seconds"] == 60
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    with time_machine.travel(start, tick=False):
        brief = put(api, scratch, "Draft notes for the call")
        longer = put(api, scratch, "Keep this one for a day", ttl_seconds=86_400)
        kept = put(api, namespace, "This namespace keeps everything")
        archived = put(api, namespace, "This one goes into the archive", ttl_seconds=10)
    assert datetime.fromisoformat(brief["expires_at"]) == start + timedelta(seconds=60)
    assert datetime.fromisoformat(longer["expires_at"]) == start + timedelta(days=1)
    assert kept["expires_at"] is None
    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        assert listed(api, scratch) == [longer["id"]]
        done = services.archive_faded(tenant="default", namespace=scratch)
        assert (done.expired_erased, done.expired_archived) == (1, 0)
        assert not Memory.objects.filter(id=brief["id"]).exists()
        done = services.archive_faded(tenant="default", namespace=namespace)
        assert (done.expired_erased, done.expired_archived) == (0, 1)
        assert Memory.objects.get(id=archived["id"]).archived_at is not None
        # Restored, it is back without the expiry that sent it away.
        back = api.ok("POST", f"/memory/{archived['id']}/restore")
        assert back["expires_at"] is None and back["status"] == "valid"
        assert archived["id"] in listed(api, namespace)
    bad = {"ttl_seconds": 60, "on_expiry": "shred"}
    assert api.error(422, "PUT", f"/namespaces/{scratch}/policy", bad) == "validation_error"
    assert api.error(422, "PUT", "/namespaces/-bad/policy", put_policy) == "validation_error"


def test_a_corrected_version_never_wedges_its_key(api: Api, namespace: str) -> None:
    """A PATCH that moves the open version before an older one, then a new store: every
    version still valid at the new one's start is closed there, and one stays open."""
    key = "team/lead"
    a = put(api, namespace, "Ana leads the team", key=key, valid_from=T1)
    b = put(api, namespace, "Ben leads the team", key=key, valid_from=T2)
    api.ok("PATCH", f"/memory/{b['id']}", {"valid_from": "2023-01-01T00:00:00Z"})
    c = put(api, namespace, "Cleo leads the team", key=key, valid_from=T3)
    history = api.ok("GET", f"/memory/{c['id']}/history")["memories"]
    assert [m["id"] for m in history if m["valid_until"] is None] == [c["id"]]
    assert {m["id"]: m["valid_until"] for m in history}[b["id"]] == c["valid_from"]
    assert ids(search(api, namespace, "Who leads the team?")) == [c["id"]]
    assert a["id"] in [m["id"] for m in history]


def test_superseding_a_later_memory_ends_it_where_it_began(api: Api, namespace: str) -> None:
    late = put(api, namespace, "The launch is planned for March", valid_from=T3)
    early = put(
        api, namespace, "The launch is planned for May", valid_from=T1, supersedes=[late["id"]]
    )
    closed = api.ok("GET", f"/memory/{late['id']}")
    assert closed["valid_until"] == closed["valid_from"]  # never valid, never inverted
    assert early["supersedes"] == [late["id"]]
    assert api.ok("PATCH", f"/memory/{late['id']}", {"ttl_seconds": 60})["expires_at"]


def test_erasing_expiry_reaches_archived_memories_and_archives_stay_listed(
    api: Api, namespace: str
) -> None:
    from somafractalmemory.memories import services
    from somafractalmemory.memories.jobs import forgetting

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    with time_machine.travel(start, tick=False):
        note = put(api, namespace, "A note archived before it expired", ttl_seconds=60)
        forgetting.archive([note["id"]], tenant="default")  # faded, say
    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        assert listed(api, namespace, archived="true") == [note["id"]]  # expired, listed
        api.ok("PUT", f"/namespaces/{namespace}/policy", {"on_expiry": "erase"})
        done = services.archive_faded(tenant="default", namespace=namespace)
        assert done.expired_erased == 1 and not Memory.objects.filter(id=note["id"]).exists()


def test_an_import_refuses_bad_keys_and_inverted_validity() -> None:
    import io
    import json

    from somafractalmemory.errors import ValidationFailed
    from somafractalmemory.memories.jobs import transfer

    good = {
        "format": transfer.FORMAT,
        "id": "mem_x",
        "tenant": "default",
        "namespace": "n",
        "type": "semantic",
        "content": "fine",
        "created_at": "2025-01-01T00:00:00Z",
    }
    for bad in ({"key": "k" * 201}, {"valid_from": T2, "valid_until": T1}):
        lines = json.dumps(good) + "\n" + json.dumps({**good, "id": "mem_y", **bad}) + "\n"
        with pytest.raises(ValidationFailed, match="line 2"):
            transfer.parse(io.StringIO(lines))
