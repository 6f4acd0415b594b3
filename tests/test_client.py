"""The Python SDK against a live `sfm serve` (one server for the module)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from somafractalmemory import client as sdk
from tests.conftest import Live
from tests.servers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def memory(live: Live) -> Iterator[sdk.Memory]:
    with sdk.Memory(live.base) as m:
        yield m


def ns() -> str:
    return f"sdk-{uuid.uuid4().hex[:10]}"


def test_the_sdk_imports_nothing_from_django() -> None:
    code = "import sys, somafractalmemory.client; print(sorted(m for m in sys.modules if "
    code += "m.split('.')[0] in ('django', 'ninja', 'torch', 'pymilvus')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_remember_recall_get_update_forget(memory: sdk.Memory) -> None:
    space = ns()
    when = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    text = "Alice prefers the window seat on long flights"
    stored = memory.remember(
        text, namespace=space, importance=0.8, metadata={"user": "alice"}, created_at=when
    )
    assert isinstance(stored, sdk.Stored) and stored.id.startswith("mem_")
    assert stored.created_at == when and not stored.deduplicated
    again = memory.remember(text, namespace=space)
    assert again.deduplicated and again.id == stored.id
    memory.remember("Bob's dentist appointment is on Tuesday", namespace=space)

    found = memory.recall(
        "where does Alice like to sit on a plane?", namespace=space, top_k=2, explain=True
    )
    assert isinstance(found, sdk.Recall) and len(found) == 2 and found.mode == "hybrid"
    best = next(iter(found))
    assert best.id == stored.id and best.metadata == {"user": "alice"}
    assert best.explain is not None and best.explain["relevance"] > 0
    assert memory.recall("Alice", namespace=space, filters={"user": "bob"}).hits == []

    record = memory.get(stored.id)
    assert isinstance(record, sdk.MemoryRecord)
    assert record.content.startswith("Alice") and record.importance == 0.8
    changed = memory.update(stored.id, importance=0.3, metadata={"user": "alice", "v": 2})
    assert changed.importance == 0.3 and memory.get(stored.id).metadata["v"] == 2

    memory.forget(stored.id)
    with pytest.raises(sdk.NotFound) as missing:
        memory.get(stored.id)
    assert missing.value.status == 404 and missing.value.code == "memory_not_found"


def test_errors_carry_the_service_code_and_change_nothing(memory: sdk.Memory) -> None:
    space = ns()
    with pytest.raises(sdk.BadRequest) as bad:
        memory.remember("too important", namespace=space, importance=2.0)
    assert bad.value.status == 422 and bad.value.code == "validation_error"
    with pytest.raises(sdk.BadRequest) as bad_filter:
        memory.recall("x", namespace=space, filters={"$bogus": 1})
    assert bad_filter.value.code == "invalid_filter"
    assert list(memory.list(namespace=space)) == []


def test_list_pages_through_everything_and_batch_chunks(memory: sdk.Memory) -> None:
    space = ns()
    texts = [f"note {i}: the build number of the nightly run was {1000 + i}" for i in range(1005)]
    stored = memory.batch({"content": t, "namespace": space} for t in texts)
    assert len(stored) == 1005 and len({s.id for s in stored}) == 1005  # two requests
    listed = list(memory.list(namespace=space, page_size=200))
    assert sorted(m.id for m in listed) == sorted(s.id for s in stored)
    assert all(m.namespace == space for m in listed)


def test_links_and_the_hierarchy(memory: sdk.Memory) -> None:
    space = ns()
    a = memory.remember("The team moved the launch to March", namespace=space)
    b = memory.remember("Marketing needs the new launch date", namespace=space)
    link = memory.link(a.id, b.id, "related", 0.5)
    assert (link.source, link.target, link.kind, link.weight) == (a.id, b.id, "related", 0.5)
    assert any(x.target == b.id and x.kind == "related" for x in memory.links(a.id))
    memory.unlink(a.id, b.id, "related")
    assert not any(x.kind == "related" for x in memory.links(a.id))

    for i in range(6):
        when = datetime(2025, 1, 6 + i, tzinfo=UTC)
        text = f"Standup {i}: the launch slipped because of the payment bug"
        memory.remember(text, namespace=space, created_at=when)
    job = memory.consolidate(space)
    assert job.finished and job.status == "succeeded" and job.result
    parents = memory.recall("launch", namespace=space, levels=[1], top_k=5)
    assert parents.hits, job.result
    children = memory.children(parents.hits[0].id)
    assert children and all(c.level == 0 for c in children)
    assert any(p.id == parents.hits[0].id for p in memory.parents(children[0].id))
    assert memory.job(job.id).status == "succeeded"


def test_rate_limited_requests_are_retried_after_retry_after(live: Live) -> None:
    tenant = f"rl{uuid.uuid4().hex[:8]}"
    live.sfm("tenant", "create", tenant, "--rpm", "60")
    secret = live.sfm("key", "create", "--tenant", tenant).strip().splitlines()[-1]
    retrying = sdk.Memory(live.base, secret, retries=sdk.Retries(attempts=3, backoff=0.05))
    impatient = sdk.Memory(live.base, secret, retries=sdk.Retries(attempts=0))
    with retrying, impatient:
        limited = None
        for _ in range(70):  # the burst: 60 requests a minute, at once
            try:
                impatient.get("mem_missing")
            except sdk.NotFound:
                continue
            except sdk.RateLimited as exc:
                limited = exc
                break
        assert limited is not None and limited.code == "rate_limited"
        clock = time.monotonic()
        with pytest.raises(sdk.NotFound):  # answered, after waiting as Retry-After said
            retrying.get("mem_missing")
        assert time.monotonic() - clock >= 0.9


def test_unreachable_service_raises_after_retries() -> None:
    with sdk.Memory(
        f"http://127.0.0.1:{free_port()}", retries=sdk.Retries(attempts=2, backoff=0.01)
    ) as memory:
        clock = time.monotonic()
        with pytest.raises(sdk.TransportError):
            memory.recall("anything")
        assert time.monotonic() - clock < 5


def test_async_client(live: Live) -> None:
    space = ns()

    async def scenario() -> None:
        async with sdk.AsyncMemory(live.base) as memory:
            stored = await memory.remember(
                "Carol's cat is called Miso", namespace=space, metadata={"user": "carol"}
            )
            lyon = {"content": "Carol lives in Lyon", "namespace": space}
            more = await memory.batch([{**lyon, "created_at": "2020-01-01T00:00:00Z"}])
            # A client test, not a ranking test: the query shares words with one memory only
            # (with "Carol's pet" the only shared word, "Carol", is in both, and the order
            # hung on a tie in the lexical legs), and the two are years apart, so that their
            # contexts (each with its neighbours) are not one and the same text.
            found = await memory.recall("what is Carol's cat called?", namespace=space)
            assert found.hits[0].id == stored.id
            listed = [m.id async for m in memory.list(namespace=space, page_size=1)]
            assert sorted(listed) == sorted([stored.id, more[0].id])
            await memory.forget(stored.id)
            with pytest.raises(sdk.NotFound):
                await memory.get(stored.id)

    asyncio.run(scenario())


def test_server_errors_are_not_retried_and_keep_their_code() -> None:
    """A 5xx other than 503 is a bug: raised at once, as ServerError."""
    calls = []

    def broken(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500, json={"error": {"code": "internal_error", "message": "x"}})

    with (
        sdk.Memory("http://sfm.invalid", transport=httpx.MockTransport(broken)) as memory,
        pytest.raises(sdk.ServerError) as error,
    ):
        memory.get("mem_x")
    assert error.value.code == "internal_error" and len(calls) == 1


def test_metrics_on_the_live_server(live: Live, memory: sdk.Memory) -> None:
    memory.recall("anything at all", namespace=ns())
    text = httpx.get(f"{live.base}/metrics", timeout=10).text
    assert 'sfm_searches_total{mode="hybrid"}' in text
    assert 'route="/api/v2/memory/search",status="200"' in text
    assert "sfm_outbox_depth" in text and "sfm_embedding_seconds_bucket" in text


def test_request_ids_on_the_live_server(live: Live) -> None:
    answered = httpx.get(f"{live.base}/healthz", headers={"X-Request-ID": "trace-42"}, timeout=10)
    assert answered.headers["X-Request-ID"] == "trace-42"
    fresh = httpx.get(f"{live.base}/api/v2/memory/mem_none", timeout=10)
    assert fresh.status_code == 404 and len(fresh.headers["X-Request-ID"]) == 32
    deadline = time.monotonic() + 10
    while "[trace-42] GET /healthz 200" not in live.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no access line with the request id in the log"
        time.sleep(0.2)


def test_requests_the_http_server_refuses_answer_in_the_error_envelope(live: Live) -> None:
    """gunicorn refuses an over-long request line or header block before Django sees it;
    the answer is still JSON with a stable code (it was gunicorn's HTML page)."""
    long_path = httpx.get(f"{live.base}/api/v2/memory/{'x' * 9000}", timeout=30)
    assert long_path.status_code == 414, long_path.text
    assert long_path.json()["error"]["code"] == "uri_too_long"
    big = httpx.get(f"{live.base}/healthz", headers={"X-Filler": "y" * 10_000}, timeout=30)
    assert big.status_code == 431, big.text
    assert big.json()["error"]["code"] == "headers_too_large"
    assert httpx.get(f"{live.base}/healthz", timeout=30).status_code == 200


def test_versions_expiry_and_as_of_through_the_sdk(memory: sdk.Memory, live: Live) -> None:
    space = ns()
    t1, t2 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
    key = "user-7/city"
    lisbon = memory.remember("Alice lives in Lisbon", namespace=space, key=key, valid_from=t1)
    berlin = memory.remember("Alice lives in Berlin", namespace=space, key=key, valid_from=t2)
    assert berlin.supersedes == [lisbon.id] and berlin.key == key and berlin.valid_from == t2
    assert [m.id for m in memory.history(berlin.id)] == [lisbon.id, berlin.id]
    assert memory.get(lisbon.id).status == "no_longer_valid"
    then = memory.recall("Where does Alice live?", namespace=space, as_of=datetime(2024, 3, 1))
    assert [h.id for h in then] == [lisbon.id]
    now = memory.recall("Where does Alice live?", namespace=space, explain=True)
    assert [h.id for h in now] == [berlin.id]
    assert now.hidden == [{"id": lisbon.id, "reason": "no_longer_valid"}]
    assert [m.id for m in memory.list(namespace=space)] == [berlin.id]
    assert {m.id for m in memory.list(namespace=space, include_invalid=True)} == {
        lisbon.id,
        berlin.id,
    }
    assert [m.id for m in memory.list(namespace=space, as_of=datetime(2024, 3, 1, tzinfo=UTC))] == [
        lisbon.id
    ]
    brief = memory.remember("The door code is 4471", namespace=space, ttl_seconds=3600)
    assert brief.expires_at is not None and brief.recorded_at is not None
    # The server's clock, not this process's (moved a year ahead in the embedded run).
    closed = memory.update(brief.id, valid_from=t1, valid_until=t2)
    assert closed.status == "no_longer_valid"
    with pytest.raises(sdk.BadRequest) as refused:
        memory.remember("x", namespace=space, expires_at=datetime(2001, 1, 1, tzinfo=UTC))
    assert refused.value.code == "invalid_validity"

    async def scenario() -> None:
        async with sdk.AsyncMemory(live.base) as m:
            porto = await m.remember("Alice lives in Porto", namespace=space, key=key)
            assert porto.supersedes == [berlin.id]
            versions = await m.history(porto.id)
            assert [v.id for v in versions] == [lisbon.id, berlin.id, porto.id]
            found = await m.recall("Where does Alice live?", namespace=space, as_of=t2)
            assert [h.id for h in found] == [berlin.id]
            every = [r.id async for r in m.list(namespace=space, include_invalid=True)]
            assert set(every) == {lisbon.id, berlin.id, porto.id, brief.id}

    asyncio.run(scenario())


def test_every_endpoint_through_the_sdk(memory: sdk.Memory, live: Live) -> None:
    """The calls beyond remember and recall: the graph, namespaces, policies, usage,
    forgetting, restore, erasure and administration; and a Recall is a sequence."""
    space = ns()
    a = memory.remember("Grace plays the cello on Sundays", namespace=space)
    b = memory.remember("Grace's cello teacher lives in Vienna", namespace=space)
    memory.link(a.id, b.id, "related")
    found = memory.recall("Grace cello", namespace=space, top_k=2)
    assert found[0].id in (a.id, b.id) and [h.id for h in found[:2]] == [h.id for h in found]
    assert len(found[:1]) == 1 and isinstance(found[-1], sdk.Hit)
    graph = memory.graph(a.id, depth=1, kinds=["related"])
    assert {n.id for n in graph.nodes} == {a.id, b.id} and not graph.truncated
    assert [(e.source, e.target) for e in graph.edges] == [(a.id, b.id)]
    counted = memory.namespace(space)
    assert counted.memories == 2 and counted.by_type == {"episodic": 2}
    assert space in [n.namespace for n in memory.namespaces()]
    assert memory.set_policy(space, ttl_seconds=3600).ttl_seconds == 3600
    assert memory.policy(space) == sdk.Policy(space, 3600, "archive")
    assert memory.usage().memories >= 2
    forgot = memory.forget_faded(space, dry_run=True)
    assert forgot.finished and forgot.result is not None and forgot.result["archived"] == 0
    assert memory.restore(a.id).id == a.id  # not archived: as it is
    would = memory.delete_namespace(space, dry_run=True)
    assert would.dry_run and would.memories == 2
    counted_first = memory.purge(namespace=space, filters={"type": "episodic"}, dry_run=True)
    assert counted_first.memories == 2 and memory.namespace(space).memories == 2
    assert memory.purge(namespace=space, everything=True).memories == 2
    with pytest.raises(sdk.NotFound):
        memory.namespace(space)
    tenant = f"sdk{uuid.uuid4().hex[:8]}"
    made = memory.create_tenant(tenant, max_memories=10)
    assert made.id == tenant and made.max_memories == 10
    assert tenant in [t.id for t in memory.tenants()]
    key = memory.create_key(["read"], tenant=tenant, name="reader")
    assert key.key is not None and key.key.startswith("sfm_") and key.tenant_id == tenant
    assert [k.id for k in memory.keys(tenant)] == [key.id]
    assert memory.revoke_key(key.id).revoked_at is not None
    done = {(e.action, e.resource) for e in memory.audit(limit=50)}  # the operator's log
    assert {("key.create", key.id), ("key.revoke", key.id)} <= done
    assert memory.delete_tenant(tenant)["deleted"]

    async def scenario() -> None:
        async with sdk.AsyncMemory(live.base) as m:
            c = await m.remember("Hugo repairs bicycles", namespace=space)
            assert (await m.namespace(space)).memories == 1
            assert (await m.graph(c.id)).nodes[0].id == c.id
            assert (await m.policy(space)).ttl_seconds == 3600  # policies outlive an erasure
            assert (await m.purge(namespace=space, everything=True)).memories == 1
            assert (await m.usage()).tenant == "default"

    asyncio.run(scenario())


def test_export_and_import_over_http(memory: sdk.Memory, live: Live) -> None:
    """An export through the API, the namespace erased, the export imported: the same
    memories, links and versions; again, nothing new; a namespace-limited key imports into
    its own namespaces only. (Ids are the store's: one store holds each in one tenant.)"""
    space = ns()
    first = memory.remember("Ivy waters the ferns on Mondays", namespace=space, key="ivy/ferns")
    second = memory.remember("Ivy waters the ferns on Fridays", namespace=space, key="ivy/ferns")
    memory.link(second.id, first.id, "related")
    text = memory.export([space])
    records = [json.loads(line) for line in text.splitlines()]
    assert sorted(r["id"] for r in records) == sorted([first.id, second.id])
    limited = memory.create_key(["read", "write"], namespaces=["elsewhere"])
    with sdk.Memory(live.base, limited.key) as narrow:
        with pytest.raises(sdk.Forbidden):
            narrow.import_(text)
        assert narrow.export() == ""  # nothing of its namespaces
    assert memory.delete_namespace(space).memories == 2
    done = memory.import_(text)
    assert (done["memories"], done["skipped"], done["owed"]) == (2, 0, 0) and done["links"] >= 2
    assert memory.import_(text.splitlines())["skipped"] == 2  # idempotent
    assert [m.id for m in memory.history(second.id)] == [first.id, second.id]
    found = memory.recall("When does Ivy water the ferns?", namespace=space)
    assert [h.id for h in found] == [second.id]

    def fields(export: str) -> list[dict[str, object]]:
        rows = [json.loads(line) for line in export.splitlines()]
        return [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]

    assert fields(memory.export([space])) == fields(text)  # every field but the write time
    with pytest.raises(sdk.BadRequest) as bad:
        memory.import_("{not json\n")
    assert bad.value.code == "validation_error"
