"""Summarizers (extractive offline, LLM over HTTP against a local fake) and grouping."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from somafractalmemory import backends
from somafractalmemory.conf import Config
from somafractalmemory.errors import SummarizerUnavailable
from somafractalmemory.retrieval import grouping
from somafractalmemory.summaries.extractive import ExtractiveSummarizer, pieces_of, sentences
from somafractalmemory.summaries.llm import LlmSummarizer
from tests.servers import JsonHandler, local_http

GROUP = [
    "Anna moved to Lisbon in March. She works at a bakery near the river.",
    "Anna says the Lisbon bakery opens at six. The river view is lovely.",
    "Anna's bakery in Lisbon sells custard tarts. Tourists queue every morning.",
    "It rained on Tuesday.",
]


def test_extractive_keeps_the_most_representative_sentences_in_order() -> None:
    summary = ExtractiveSummarizer().summarize(GROUP, max_bytes=1000)
    picked = sentences(summary)
    everything = [s for text in GROUP for s in sentences(text)]
    assert picked and all(p in everything for p in picked)
    assert picked == sorted(picked, key=everything.index)  # original order
    assert "It rained on Tuesday." not in picked  # shares no word with the group
    assert any("Lisbon" in p and "bakery" in p for p in picked)
    assert ExtractiveSummarizer().summarize(GROUP, max_bytes=1000) == summary  # deterministic


def test_extractive_keeps_sentences_whole_attributed_and_without_repeats() -> None:
    talk = [
        "Alice: Hi Bob! I finally moved to Lisbon in May, into a flat near the river.",
        "Bob: Wow, Alice! How is the new flat near the river in Lisbon?",
        "Alice: The flat in Lisbon is small, but the river view from the flat is lovely.",
        "Alice: I moved to Lisbon in May, into a flat near the river.",
        "Bob: Nice.",
    ]
    summary = ExtractiveSummarizer().summarize(talk, max_bytes=1000)
    # Whole sentences, led by the speaker where the speaker changes; the repeat dropped.
    assert summary.startswith("Alice: ")
    assert summary.count("moved to Lisbon in May, into a flat near the river.") == 1
    assert "Nice." not in summary and "Hi Bob!" not in summary  # greetings say little
    # Its sentences are the memories' (the speaker's name put back where it changes).
    heard = {p.text for p in pieces_of(talk)}
    assert all(p.text in heard for p in pieces_of([summary]))


@given(st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=12), st.integers(1, 400))
def test_extractive_never_exceeds_the_size_limit(texts: list[str], limit: int) -> None:
    assert len(ExtractiveSummarizer().summarize(texts, max_bytes=limit).encode()) <= limit


class FakeChat(JsonHandler):
    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.read_json()
        FakeChat.calls.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        if body["model"] == "broken":
            self.send_json(502)
            return
        listed = body["messages"][-1]["content"].count("\n- ") + 1
        message = {"role": "assistant", "content": f" Summary of {listed} memories. "}
        self.send_json(200, {"choices": [{"message": message}]})


@pytest.fixture(scope="module")
def chat_url() -> Iterator[str]:
    with local_http(FakeChat) as base:
        yield f"{base}/v1"


def test_llm_summarizer_speaks_openai_chat(chat_url: str) -> None:
    config = Config(summarizer="llm", llm_url=chat_url, llm_model="tiny", llm_api_key="k-9")
    summarizer = backends.build_summarizer(config)
    assert isinstance(summarizer, LlmSummarizer) and summarizer.name == "llm:tiny"
    FakeChat.calls.clear()
    assert summarizer.summarize(GROUP, max_bytes=1000) == "Summary of 4 memories."
    (call,) = FakeChat.calls
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer k-9"
    assert call["model"] == "tiny" and call["temperature"] == 0
    assert "Anna moved to Lisbon" in call["messages"][-1]["content"]
    assert summarizer.summarize(GROUP, max_bytes=10) == "Summary of"


def test_llm_summarizer_failure_is_503(chat_url: str) -> None:
    with pytest.raises(SummarizerUnavailable) as caught:
        LlmSummarizer(chat_url, "broken").summarize(GROUP, max_bytes=100)
    assert caught.value.status == 503 and caught.value.code == "summarizer_unavailable"
    with pytest.raises(SummarizerUnavailable):
        LlmSummarizer("http://127.0.0.1:9/v1", "x", timeout=2).summarize(GROUP, max_bytes=100)


def unit(seed: int, dim: int = 8) -> grouping.Vector:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


items = st.lists(
    st.tuples(st.floats(0, 1e6), st.integers(0, 5), st.integers(0, 10**6)),
    min_size=1,
    max_size=60,
)


@given(items, st.floats(1, 1e5), st.floats(-1, 1))
def test_grouping_partitions_and_respects_time_and_similarity(
    raw: list[tuple[float, int, int]], window: float, threshold: float
) -> None:
    # Items near one of six directions, so that groups form.
    made = [
        grouping.Item(f"i{n}", t, np.float32(1 / 1.01) * (unit(topic) + 0.1 * unit(1000 + noise)))
        for n, (t, topic, noise) in enumerate(raw)
    ]
    groups = grouping.group(made, window=window, threshold=threshold)
    members = [m for g in groups for m in g.members]
    assert sorted(members) == sorted(i.id for i in made)  # each item in exactly one group
    at = {i.id: i for i in made}
    for g in groups:
        times = sorted(at[m].time for m in g.members)
        # Consecutive members are never more than a window apart.
        assert all(b - a <= window for a, b in pairwise(times))
        assert (g.start, g.end) == (times[0], times[-1])
    again = grouping.group(made, window=window, threshold=threshold)
    assert [g.members for g in again] == [g.members for g in groups]  # deterministic


def test_grouping_folds_new_items_into_seeds() -> None:
    x, y = np.eye(2, dtype=np.float32)
    seed = grouping.seed("parent", 100.0, 200.0, x * 3)
    near = grouping.Item("near", 250.0, x)
    far_in_time = grouping.Item("late", 10_000.0, x)
    other = grouping.Item("other", 210.0, y)
    groups = grouping.group([near, far_in_time, other], window=100, threshold=0.5, seeds=[seed])
    assert groups[0].key == "parent" and groups[0].members == ["near"]
    assert sorted(m for g in groups[1:] for m in g.members) == ["late", "other"]
