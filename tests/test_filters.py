"""The filter language: parsing, errors, and Milvus agreeing with a reference evaluator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from somafractalmemory.errors import InvalidFilter
from somafractalmemory.retrieval import filters
from somafractalmemory.retrieval.filters import AnyOf, Compare, Exists, Field
from somafractalmemory.vectors.base import VectorIndex, VectorRecord
from somafractalmemory.vectors.local import LocalIndex
from somafractalmemory.vectors.milvus import MilvusIndex
from tests.conftest import ON_LITE, ON_SERVER


def test_plain_pairs_are_metadata_equality() -> None:
    assert filters.parse({"category": "x"}) == Compare(Field(("category",)), "$eq", "x")
    assert filters.parse({}) is None and filters.parse(None) is None


def test_negation_is_pushed_to_the_leaves() -> None:
    node = filters.parse({"$not": {"n": {"$gt": 3}}})
    assert node == AnyOf((Compare(Field(("n",)), "$lte", 3), Exists(Field(("n",)), False)))
    assert "not" not in filters.to_milvus(node).replace("not in", "")


def test_columns_and_times() -> None:
    node = filters.parse({"created_at": {"$gte": "2024-01-01T00:00:00Z"}, "type": "semantic"})
    expr = filters.to_milvus(node)  # type: ignore[arg-type]
    assert "created_at >= 1704067200000" in expr and 'type == "semantic"' in expr


def test_literals_are_escaped() -> None:
    expr = filters.to_milvus(filters.parse({"k": 'a" or tenant != "'}))  # type: ignore[arg-type]
    assert expr == 'metadata["k"] == "a\\" or tenant != \\""'


@pytest.mark.parametrize(
    "spec",
    [
        [1],
        {"$nope": 1},
        {"k": {"$regex": "a"}},
        {"k": {"$in": "a"}},
        {"k": {"$in": [1, "a"]}},
        {"k": {"$gt": True}},
        {"k": None},
        {"k": [1, 2]},
        {"k": {"nested": 1}},
        {"k": float("nan")},
        {"k": 2**70},
        {"a b": 1},
        {"x__gt": 5},
        {"0": 1},
        {"$and": []},
        {"$or": {"k": 1}},
        {"$not": [1]},
        {"importance": "high"},
        {"type": {"$gt": "episodic"}},
        {"k": {"$exists": "yes"}},
        {"k": {}},
        {"$or": [{"k": i} for i in range(300)]},
    ],
)
def test_invalid_filters_are_rejected(spec: Any) -> None:
    with pytest.raises(InvalidFilter):
        filters.parse(spec)


# -- Milvus against a reference evaluator --------------------------------------------------

KEYS = {"n": st.integers(-3, 3), "s": st.sampled_from(["a", "b", "c"]), "b": st.booleans()}


def _docs() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    docs = []
    for _ in range(60):
        doc: dict[str, Any] = {}
        if rng.random() < 0.7:
            doc["n"] = int(rng.integers(-3, 4))
        if rng.random() < 0.7:
            doc["s"] = str(rng.choice(["a", "b", "c"]))
        if rng.random() < 0.5:
            doc["b"] = bool(rng.random() < 0.5)
        docs.append(doc)
    return docs


DOCS = _docs()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def reference(spec: dict[str, Any], doc: dict[str, Any]) -> bool:
    """MongoDB-style semantics, as docs/api.md states them."""
    results = []
    for key, value in spec.items():
        if key == "$and":
            results.append(all(reference(s, doc) for s in value))
        elif key == "$or":
            results.append(any(reference(s, doc) for s in value))
        elif key == "$not":
            results.append(not reference(value, doc))
        else:
            results.append(_field(doc, key, value))
    return all(results)


def _field(doc: dict[str, Any], key: str, value: Any) -> bool:
    if not isinstance(value, dict):
        value = {"$eq": value}
    results = []
    for op, arg in value.items():
        present, got = key in doc, doc.get(key)
        if op == "$not":
            results.append(not _field(doc, key, arg))
        elif op == "$exists":
            results.append(present == arg)
        elif op == "$eq":
            results.append(present and _same(got, arg))
        elif op == "$ne":
            results.append(not (present and _same(got, arg)))
        elif op == "$in":
            results.append(present and any(_same(got, a) for a in arg))
        elif op == "$nin":
            results.append(not (present and any(_same(got, a) for a in arg)))
        else:
            if not present or isinstance(got, bool) or not isinstance(got, int):
                results.append(False)
                continue
            compare = {"$gt": got > arg, "$gte": got >= arg, "$lt": got < arg, "$lte": got <= arg}
            results.append(compare[op])
    return all(results)


@st.composite
def leaf(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(st.sampled_from(sorted(KEYS)))
    values = KEYS[key]
    ops = ["$eq", "$ne", "$in", "$nin", "$exists"] + (
        ["$gt", "$gte", "$lt", "$lte"] if key == "n" else []
    )
    op = draw(st.sampled_from(ops))
    if op == "$exists":
        arg: Any = draw(st.booleans())
    elif op in ("$in", "$nin"):
        arg = draw(st.lists(values, min_size=1, max_size=3))
    else:
        arg = draw(values)
    body: Any = arg if op == "$eq" and draw(st.booleans()) else {op: arg}
    if draw(st.integers(0, 4)) == 0:
        body = {"$not": body if isinstance(body, dict) else {"$eq": body}}
    return {key: body}


specs = st.recursive(
    leaf(),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda xs: {"$and": xs}),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: {"$or": xs}),
        children.map(lambda x: {"$not": x}),
    ),
    max_leaves=6,
)


@pytest.fixture(
    scope="module",
    params=[
        "local",
        pytest.param("milvus-lite", marks=ON_LITE),
        pytest.param("milvus-server", marks=ON_SERVER),
    ],
)
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VectorIndex, str]]:
    """The filter fields of DOCS in each engine that evaluates filters itself: the local
    engine's numpy columns, Milvus's expressions (Lite in the embedded run, a real server in
    the production run)."""
    work = Path(tmp_path_factory.mktemp("filters"))
    index: VectorIndex
    if request.param == "local":
        index = LocalIndex(work, model="filters", dim=4)
    elif request.param == "milvus-lite":
        index = MilvusIndex(str(work / "milvus.db"), model="filters", dim=4)
    else:
        uri, db_name = request.getfixturevalue("milvus_database")
        index = MilvusIndex(uri, model="filters", dim=4, db_name=db_name)
    tenant = uuid.uuid4().hex
    vector = np.array([1, 0, 0, 0], dtype=np.float32)
    index.upsert(
        [
            VectorRecord(f"m{i}", f"v{i}", vector, tenant, "ns", "episodic", 0.5, 0, doc)
            for i, doc in enumerate(DOCS)
        ]
    )
    yield index, tenant
    index.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=specs)
def test_the_index_agrees_with_the_reference(
    loaded: tuple[VectorIndex, str], spec: dict[str, Any]
) -> None:
    index, tenant = loaded
    where = filters.parse(spec)
    hits = index.search(
        np.array([1, 0, 0, 0], dtype=np.float32),
        tenant=tenant,
        namespace="ns",
        where=where,
        top_k=100,
    )
    expected = {f"m{i}" for i, doc in enumerate(DOCS) if reference(spec, doc)}
    assert {h.id for h in hits} == expected, filters.to_milvus(where) if where else "no filter"
