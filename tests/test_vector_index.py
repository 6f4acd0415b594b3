"""Contract of VectorIndex, run unchanged against every back end available here."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from somafractalmemory.conf import get_config
from somafractalmemory.errors import IndexUnavailable
from somafractalmemory.retrieval import filters
from somafractalmemory.vectors.base import VectorIndex, VectorRecord
from somafractalmemory.vectors.clock import (
    LOGICAL_BITS,
    LocalClock,
    RedisClock,
    WriteClock,
    guarantee,
)
from somafractalmemory.vectors.local import EXACT_ROWS, EXACT_SHARE, LocalIndex
from somafractalmemory.vectors.milvus import MilvusIndex
from tests.conftest import ON_LITE, ON_SERVER
from tests.servers import milvus_lite

DIM = 16


@pytest.fixture(
    scope="module",
    params=[
        "local",
        "local-graph",
        pytest.param("lite", marks=ON_LITE),
        pytest.param("lite-grpc", marks=ON_LITE),
        pytest.param("server", marks=ON_SERVER),
        pytest.param("server-session", marks=ON_SERVER),
    ],
)
def index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VectorIndex]:
    """The embedded default's engine (vectors/local.py), as it runs and with every search
    walking the graph (no exact scoring of small scopes); Milvus Lite in process; `sfm
    milvus-lite` serving a file over gRPC (the server code path on Lite's engine); a real
    Milvus server, at Strong and at Session."""
    with contextlib.ExitStack() as stack:
        work = tmp_path_factory.mktemp("contract")
        if request.param.startswith("local"):
            walk = request.param == "local-graph"
            local = LocalIndex(
                work,
                model="contract",
                dim=DIM,
                exact_rows=0 if walk else EXACT_ROWS,
                exact_share=0.0 if walk else EXACT_SHARE,
            )
            yield local
            local.close()
            return
        db_name, consistency = None, "auto"
        if request.param == "lite":
            uri = str(work / "milvus.db")
        elif request.param == "lite-grpc":
            env = {**os.environ, "SFM_DATA_DIR": str(work)}
            env.pop("SFM_MILVUS_URI", None)
            uri = stack.enter_context(milvus_lite(env, work / "milvus.log"))
        else:
            uri, db_name = request.getfixturevalue("milvus_database")
            consistency = "Session" if request.param == "server-session" else "Strong"
        built = MilvusIndex(
            uri,
            model=f"contract-{uuid.uuid4().hex[:8]}",
            dim=DIM,
            db_name=db_name,
            consistency=consistency,
        )
        assert built.is_lite == (request.param == "lite")
        assert built.consistency == ("Session" if consistency == "Session" else "Strong")
        yield built
        built.close()


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def record(i: int, tenant: str, **fields: object) -> VectorRecord:
    base: dict[str, object] = {
        "id": f"mem_{tenant}_{i}",
        "embedding_id": f"vec_{i}",
        "vector": unit(i),
        "tenant": tenant,
        "namespace": "ns",
        "type": "episodic",
        "importance": 0.5,
        "created_at_ms": 1_700_000_000_000 + i,
        "metadata": {"i": i, "even": i % 2 == 0},
    }
    base.update(fields)
    return VectorRecord(**base)  # type: ignore[arg-type]


def test_nearest_first_and_exact_match_scores_one(index: VectorIndex) -> None:
    tenant = uuid.uuid4().hex
    index.upsert([record(i, tenant) for i in range(50)])
    hits = index.search(unit(7), tenant=tenant, namespace="ns", where=None, top_k=5)
    assert hits[0].id == f"mem_{tenant}_7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 5


def test_nearest_answers_many_vectors_like_search(index: VectorIndex) -> None:
    tenant = uuid.uuid4().hex
    index.upsert([record(i, tenant) for i in range(30)])
    index.upsert([record(100, uuid.uuid4().hex), record(101, tenant, namespace="other")])
    probes = np.stack([unit(3), unit(100), unit(101)])
    many = index.nearest(probes, tenant=tenant, namespace="ns", top_k=4)
    one_by_one = [
        index.search(p, tenant=tenant, namespace="ns", where=None, top_k=4) for p in probes
    ]
    assert [[h.id for h in hits] for hits in many] == [[h.id for h in hits] for hits in one_by_one]
    assert many[0][0].id == f"mem_{tenant}_3"
    assert all(
        h.id.startswith(f"mem_{tenant}_") and h.id != f"mem_{tenant}_101"
        for hits in many
        for h in hits
    )
    assert index.nearest(probes[:0], tenant=tenant, namespace="ns", top_k=4) == []


def test_tenant_and_namespace_scope(index: VectorIndex) -> None:
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    index.upsert([record(1, a), record(2, b), record(3, a, namespace="other")])
    hits = index.search(unit(2), tenant=a, namespace=None, where=None, top_k=10)
    assert {h.id for h in hits} == {f"mem_{a}_1", f"mem_{a}_3"}
    hits = index.search(unit(2), tenant=a, namespace="ns", where=None, top_k=10)
    assert {h.id for h in hits} == {f"mem_{a}_1"}


def test_filter_inside_search_fills_top_k(index: VectorIndex) -> None:
    tenant = uuid.uuid4().hex
    index.upsert([record(i, tenant) for i in range(100)])
    where = filters.parse({"i": {"$gte": 90}})
    hits = index.search(unit(3), tenant=tenant, namespace="ns", where=where, top_k=10)
    assert sorted(h.id for h in hits) == sorted(f"mem_{tenant}_{i}" for i in range(90, 100))


def test_upsert_replaces_and_delete_removes(index: VectorIndex) -> None:
    tenant = uuid.uuid4().hex
    index.upsert([record(1, tenant)])
    index.upsert([record(1, tenant, vector=unit(99), metadata={"i": 99})])
    hits = index.search(unit(99), tenant=tenant, namespace="ns", where=None, top_k=10)
    assert [h.id for h in hits] == [f"mem_{tenant}_1"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    where = filters.parse({"i": 1})
    assert index.search(unit(1), tenant=tenant, namespace="ns", where=where, top_k=10) == []
    index.delete([f"mem_{tenant}_1"])
    assert index.search(unit(99), tenant=tenant, namespace="ns", where=None, top_k=10) == []
    index.delete([f"mem_{tenant}_1"])  # deleting what is gone is not an error


def test_context_legs_search_the_context_vectors_and_deletes_reach_them(
    index: VectorIndex,
) -> None:
    tenant = uuid.uuid4().hex
    index.upsert([record(i, tenant, context_vector=unit(500 + i)) for i in range(20)])
    hits = index.search(unit(505), tenant=tenant, namespace="ns", where=None, top_k=3, context=True)
    assert hits[0].id == f"mem_{tenant}_5"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    plain = index.search(unit(505), tenant=tenant, namespace="ns", where=None, top_k=3)
    assert plain[0].score < 0.9  # the memory vectors are not the context vectors
    where = filters.parse({"even": True})
    hits = index.search(
        unit(505), tenant=tenant, namespace="ns", where=where, top_k=3, context=True
    )
    assert hits and all(int(h.id.rsplit("_", 1)[1]) % 2 == 0 for h in hits)
    index.delete([f"mem_{tenant}_5"])
    hits = index.search(unit(505), tenant=tenant, namespace="ns", where=None, top_k=3, context=True)
    assert f"mem_{tenant}_5" not in {h.id for h in hits}


def test_lexical_legs_where_the_engine_has_bm25(index: VectorIndex) -> None:
    """Milvus Lite has BM25; a server before 2.5 does not, and says so (SQL takes the legs)."""
    tenant = uuid.uuid4().hex
    index.upsert(
        [
            record(1, tenant, lexical="k_apple k_pie", context_lexical="k_apple k_pie k_oven"),
            record(2, tenant, lexical="k_pear", context_lexical="k_pear k_oven k_oven"),
        ]
    )
    if not index.lexical:
        if isinstance(index, MilvusIndex):  # a server before 2.5: a difference worth a note
            assert any("BM25" in note for note in index.notes())
        with pytest.raises(IndexUnavailable):
            index.search_lexical("k_apple", tenant=tenant, namespace="ns", where=None, top_k=5)
        return
    found = index.search_lexical("k_apple", tenant=tenant, namespace="ns", where=None, top_k=5)
    assert [h.id for h in found] == [f"mem_{tenant}_1"]
    around = index.search_lexical(
        "k_oven", tenant=tenant, namespace="ns", where=None, top_k=5, context=True
    )
    assert [h.id for h in around] == [f"mem_{tenant}_2", f"mem_{tenant}_1"]


def test_count_grows_with_upserts(index: VectorIndex) -> None:
    before = index.count()
    tenant = uuid.uuid4().hex
    index.upsert([record(i, tenant) for i in range(7)])
    assert index.count() == before + 7


@ON_LITE
def test_lite_indexes_exactly_and_reopening_reindexes(tmp_path: Path) -> None:
    """Milvus Lite answers from an approximate index unless the vectors' index is FLAT: the
    default there is FLAT, and a file indexed otherwise is re-indexed when opened."""
    uri = str(tmp_path / "milvus.db")
    approximate = MilvusIndex(uri, model="reindex", dim=DIM, index_type="AUTOINDEX")
    try:
        approximate.upsert([record(i, "t") for i in range(60)])
        assert approximate.held_index_type() == "AUTOINDEX"
    finally:
        approximate.close()
    exact = MilvusIndex(uri, model="reindex", dim=DIM)
    try:
        assert exact.index_type == "FLAT" and exact.held_index_type() == "FLAT"
        assert exact.count() == 60
        for i in (3, 41):
            hits = exact.search(unit(i), tenant="t", namespace=None, where=None, top_k=5)
            scores = {h.id: h.score for h in hits}
            assert hits[0].id == f"mem_t_{i}"
            cosines = sorted((float(unit(j) @ unit(i)) for j in range(60)), reverse=True)
            assert sorted(scores.values(), reverse=True) == pytest.approx(cosines[:5], abs=1e-5)
    finally:
        exact.close()


def test_entries_stream_every_id_and_reset_empties(index: VectorIndex) -> None:
    """(Last of the tests on `index`: it empties it.)"""
    tenant = uuid.uuid4().hex
    before = index.count()
    index.upsert([record(i, tenant) for i in range(2500)])
    entries = dict(index.entries())
    assert len(entries) == before + 2500
    assert entries[f"mem_{tenant}_7"] == "vec_7"
    index.reset()
    assert index.count() == 0 and list(index.entries()) == []
    index.upsert([record(1, tenant)])  # and it takes writes again
    assert [
        h.id for h in index.search(unit(1), tenant=tenant, namespace="ns", where=None, top_k=3)
    ] == [f"mem_{tenant}_1"]


def shared_clock() -> WriteClock:
    """Redis's when the run has Redis (the production stack), else one process's."""
    url = get_config().redis_url
    return RedisClock(url) if url else LocalClock()


@ON_SERVER
def test_session_workers_see_each_others_writes_and_deletes_at_once(
    milvus_database: tuple[str, str],
) -> None:
    """Two workers' indexes on one collection, at Session with a shared write clock: what one
    writes the other finds by its very next search, what one deletes the other never finds
    again; reads that follow no write wait for no time tick."""
    uri, db_name = milvus_database
    model = f"session-{uuid.uuid4().hex[:8]}"
    clock = shared_clock()
    one, other = (
        MilvusIndex(uri, model=model, dim=DIM, db_name=db_name, consistency="Session", clock=clock)
        for _ in range(2)
    )
    try:
        tenant = uuid.uuid4().hex
        for i in range(15):
            one.upsert([record(i, tenant)])
            hits = other.search(unit(i), tenant=tenant, namespace="ns", where=None, top_k=1)
            assert [h.id for h in hits] == [f"mem_{tenant}_{i}"]
            one.delete([f"mem_{tenant}_{i}"])
            hits = other.search(unit(i), tenant=tenant, namespace="ns", where=None, top_k=5)
            assert f"mem_{tenant}_{i}" not in {h.id for h in hits}
            assert other.vectors([f"mem_{tenant}_{i}"]) == {}
        assert clock.latest(one._clock_key(one.name)) > 0
    finally:
        one.close()
        other.close()


@ON_SERVER
def test_a_write_notes_one_server_time_for_what_was_acknowledged(
    milvus_database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to both collections (the 2.3.5 server keeps the context vectors in a second
    one) asks the server for one timestamp, after both; when the second call fails, the
    first one's write is still noted, so a reader waits for it."""
    from somafractalmemory.vectors import milvus

    uri, db_name = milvus_database
    clock = LocalClock()
    index = MilvusIndex(
        uri,
        model=f"noted-{uuid.uuid4().hex[:8]}",
        dim=DIM,
        db_name=db_name,
        consistency="Session",
        clock=clock,
    )
    try:
        if index.context_name == index.name:
            pytest.skip("this server holds both vectors in one collection")
        asked: list[int] = []
        real = milvus._allocated_timestamp

        def allocated(*args: Any) -> int:
            asked.append(1)
            return int(real(*args))

        monkeypatch.setattr(milvus, "_allocated_timestamp", allocated)
        tenant = uuid.uuid4().hex
        index.upsert([record(1, tenant)])
        assert len(asked) == 1
        assert clock.latest(index._clock_key(index.name)) > 0
        # One server time for both collections.
        assert clock.latest(index._clock_key(index.context_name)) == clock.latest(
            index._clock_key(index.name)
        )
        calls = index._call

        def main_fails(what: str, method: str, *args: Any, collection: str = "", **kw: Any) -> Any:
            if collection == index.name:
                raise IndexUnavailable("vector index upsert failed: the test")
            return calls(what, method, *args, collection=collection, **kw)

        monkeypatch.setattr(index, "_call", main_fails)
        index._clock = fresh = LocalClock()  # what this write notes, alone
        with pytest.raises(IndexUnavailable):
            index.upsert([record(2, tenant)])
        assert len(asked) == 2
        assert fresh.latest(index._clock_key(index.context_name)) > 0  # the context write
        assert fresh.latest(index._clock_key(index.name)) == 0  # nothing acknowledged there
    finally:
        index.close()


def test_a_write_clock_keeps_the_latest_time() -> None:
    for clock in (LocalClock(), shared_clock()):
        key = uuid.uuid4().hex
        assert clock.latest(key) == 0
        clock.note(key, 1_796_000_000_005)
        clock.note(key, 1_796_000_000_003)  # an older write acknowledged later
        assert clock.latest(key) == 1_796_000_000_005
        clock.note(key, 1_796_000_000_009)
        assert clock.latest(key) == 1_796_000_000_009
    assert guarantee(0) == 1  # nothing noted: nothing to wait for
    assert guarantee(5) >> LOGICAL_BITS == 6  # every timestamp of millisecond 5 is before it
