"""The LangGraph store and the LangChain retriever against a live server: the store's
contract as LangGraph's `BaseStore` documents it (LangGraph ships no conformance suite),
a real graph that remembers and recalls through it, and a retriever in a chain."""

from __future__ import annotations

import asyncio
import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, Item, SearchItem

from somafractalmemory.integrations.langchain import SomaRetriever
from somafractalmemory.integrations.langgraph import SomaStore, from_namespace, to_namespace
from somafractalmemory.memories.schemas import NAMESPACE_PATTERN
from tests.conftest import Live

pytestmark = pytest.mark.slow


@given(
    st.lists(
        st.text(min_size=1, max_size=12).filter(lambda s: "." not in s), min_size=1, max_size=4
    )
)
def test_every_namespace_tuple_has_one_service_namespace_and_back(labels: list[str]) -> None:
    import re

    name = to_namespace(labels)
    assert from_namespace(name) == tuple(labels)
    if len(name) <= 128:
        assert re.match(NAMESPACE_PATTERN, name), name


@pytest.fixture
def store(live: Live) -> Any:
    made = SomaStore(live.base)
    yield made
    made.close()


def test_put_get_search_list_and_delete(store: SomaStore) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    prefs, notes = ("users", user, "prefs"), ("users", user, "notes")
    value = {
        "text": "Prefers dark mode in every app",
        "tags": ["ui"],
        "score": 3,
        "nested": {"a": 1},
    }
    store.put(prefs, "theme", value, index=["text"])
    store.put(notes, "n1", {"text": "Flies to Lisbon on Friday", "score": 1})
    store.put(notes, "n2", {"text": "Allergic to peanuts", "score": 5})
    got = store.get(prefs, "theme")
    assert isinstance(got, Item) and got.value == value and got.key == "theme"
    assert got.namespace == prefs
    assert store.get(prefs, "missing") is None
    # A second put is the new version: get answers it, the old one is history.
    store.put(prefs, "theme", {"text": "Prefers light mode now"}, index=["text"])
    current = store.get(prefs, "theme")
    assert current is not None and current.value == {"text": "Prefers light mode now"}
    found = store.search(("users", user), query="which colour scheme does the user like?")
    assert isinstance(found[0], SearchItem) and found[0].key == "theme"
    assert found[0].score is not None and found[0].namespace == prefs
    assert "dark" not in str([f.value for f in found])  # the old version is not an item
    allergic = store.search(("users", user, "notes"), query="food", filter={"score": {"$gte": 4}})
    assert [f.key for f in allergic] == ["n2"]
    listed = store.search(("users", user, "notes"), filter={"score": 1})
    assert [f.key for f in listed] == ["n1"] and listed[0].score is None
    page = store.search(("users", user), limit=1, offset=1)
    assert len(page) == 1
    assert store.list_namespaces(prefix=("users", user)) == sorted([notes, prefs])
    assert store.list_namespaces(prefix=("users", user), max_depth=2) == [("users", user)]
    assert notes in store.list_namespaces(suffix=("notes",))
    assert store.list_namespaces(prefix=("users", "*", "prefs"), limit=1000).count(prefs) == 1
    store.delete(prefs, "theme")
    assert store.get(prefs, "theme") is None
    assert store.search(prefs, query="colour scheme") == []  # no version is left


def test_async_operations(store: SomaStore) -> None:
    space = ("async", uuid.uuid4().hex[:8])

    async def scenario() -> None:
        await store.aput(space, "k", {"text": "Ravi walks the dog at seven"})
        item = await store.aget(space, "k")
        assert item is not None and item.value["text"].startswith("Ravi")
        hits = await store.asearch(space, query="when is the dog walked?")
        assert [h.key for h in hits] == ["k"]
        await store.adelete(space, "k")
        assert await store.aget(space, "k") is None

    asyncio.run(scenario())


class State(TypedDict):
    user: str
    question: str
    answers: Annotated[list[str], operator.add]


def test_a_langgraph_graph_remembers_and_recalls_through_the_store(store: SomaStore) -> None:
    def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
        space = ("memories", state["user"])
        store.put(space, "seat", {"text": f"{state['user']} prefers the window seat"})
        store.put(space, "drink", {"text": f"{state['user']} drinks green tea"})
        return {}

    def recall(state: State, *, store: BaseStore) -> dict[str, Any]:
        hits = store.search(("memories", state["user"]), query=state["question"], limit=1)
        return {"answers": [h.value["text"] for h in hits]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    graph = builder.compile(store=store)
    user = f"user{uuid.uuid4().hex[:6]}"
    out = graph.invoke(
        {"user": user, "question": "Which seat does the user prefer?", "answers": []}
    )
    assert out["answers"] == [f"{user} prefers the window seat"]


def test_a_langchain_retriever_in_a_chain(live: Live, store: SomaStore) -> None:
    namespace = f"lc-{uuid.uuid4().hex[:8]}"
    store.memory.remember(
        "Tomas repairs vintage radios", namespace=namespace, metadata={"who": "tomas"}
    )
    store.memory.remember("The bakery opens at six", namespace=namespace)
    retriever = SomaRetriever(url=live.base, namespace=namespace, top_k=1)

    def contents(docs: list[Any]) -> list[tuple[str, str]]:
        return [(d.page_content, d.metadata["who"]) for d in docs]

    chain = retriever | RunnableLambda(contents)
    assert chain.invoke("who fixes old radios?") == [("Tomas repairs vintage radios", "tomas")]
    docs = asyncio.run(retriever.ainvoke("who fixes old radios?"))
    assert docs[0].metadata["score"] > 0 and docs[0].metadata["namespace"] == namespace
    filtered = SomaRetriever(url=live.base, namespace=namespace, filters={"who": "nobody"})
    assert filtered.invoke("radios") == []
