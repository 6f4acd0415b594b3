"""The embedded engine's own promises (vectors/local.py), beyond the contract every index keeps
(test_vector_index.py): its files after a crash and an erasure, its graph's recall, its
threads."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from somafractalmemory.errors import IndexLocked
from somafractalmemory.retrieval import filters
from somafractalmemory.vectors import postings
from somafractalmemory.vectors.base import VectorRecord
from somafractalmemory.vectors.local import LocalIndex, beam

DIM = 32


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def records(rows: np.ndarray, tenant: str = "t", start: int = 0) -> list[VectorRecord]:
    return [
        VectorRecord(
            id=f"m{start + i}",
            embedding_id=f"v{start + i}",
            vector=row,
            tenant=tenant,
            namespace="ns",
            type="episodic",
            importance=0.5,
            created_at_ms=start + i,
            metadata={"tenth": (start + i) % 10 == 0},
            lexical=f"w{start + i} common",
            context_lexical=f"w{start + i} c{start + i}",
        )
        for i, row in enumerate(rows)
    ]


def lexical(index: LocalIndex, tokens: str, **kwargs: object) -> list[str]:
    options: dict[str, object] = {"tenant": "t", "namespace": "ns", "where": None, "top_k": 10}
    options.update(kwargs)
    return [h.id for h in index.search_lexical(tokens, **options)]  # type: ignore[arg-type]


def top(index: LocalIndex, query: np.ndarray, **kwargs: object) -> list[str]:
    options: dict[str, object] = {"tenant": "t", "namespace": "ns", "where": None, "top_k": 10}
    options.update(kwargs)
    return [h.id for h in index.search(query, **options)]  # type: ignore[arg-type]


def token_bytes(word: str) -> bytes:
    """How the log stores a token."""
    return postings.parse(word).astype("<u8").tobytes()


WRITER = """
import os, sys
import numpy as np
from somafractalmemory.vectors.local import LocalIndex, beam
from tests.test_local_index import records, vectors
index = LocalIndex(__import__("pathlib").Path(sys.argv[1]), model="m", dim=32, save_every=300)
rows = vectors(1000, seed=1)
for start in range(0, 1000, 100):
    index.upsert(records(rows[start:start + 100], start=start))
    print(start + 100, flush=True)  # acknowledged
index.delete(["m5"])
print("deleted", flush=True)
sys.stdin.read()  # killed here, never closed
"""


def test_every_acknowledged_write_is_found_after_kill_9(tmp_path: Path) -> None:
    """Graphs saved every 300 entries, the rest only in the log: what the killed process had
    acknowledged is all there when the files are opened again, the deleted entry too gone."""
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as process:
        assert process.stdout is not None
        try:
            lines = [process.stdout.readline().strip() for _ in range(11)]
        finally:
            process.kill()
    assert lines[-2:] == ["1000", "deleted"]
    saved = [p for p in (tmp_path / "sfm_m_32").iterdir() if p.suffix == ".faiss"]
    assert saved, "the graphs were saved at least once before the kill"
    index = LocalIndex(tmp_path, model="m", dim=32)
    try:
        assert index.count() == 999
        rows = vectors(1000, seed=1)
        for i in (0, 299, 300, 999):  # saved, saved, logged only, logged only
            assert top(index, rows[i])[0] == f"m{i}"
            assert lexical(index, f"w{i}") == [f"m{i}"]
            assert lexical(index, f"c{i}", context=True) == [f"m{i}"]
        assert "m5" not in top(index, rows[5], top_k=50)
        assert lexical(index, "w5") == []
    finally:
        index.close()


def test_a_deleted_vector_leaves_every_file_once_scrubbed(tmp_path: Path) -> None:
    rows = vectors(200, seed=2)
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    index.upsert(records(rows))
    index.close()  # the vectors are in the graph files now
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        index.delete(["m7", "m8"])
        assert index.scrub()
        stored = b"".join(p.read_bytes() for p in (tmp_path / "sfm_m_32").iterdir())
        for i in (7, 8):
            assert rows[i].tobytes() not in stored
            assert token_bytes(f"w{i}") not in stored and token_bytes(f"c{i}") not in stored
        assert rows[9].tobytes() in stored  # what is kept is there: the check can fail
        assert token_bytes("w9") in stored
        assert index.count() == 198 and top(index, rows[9])[0] == "m9"
        index.delete(["m9"])
        index._release()  # the process dies: the graph files on disk still hold m9
    finally:
        index.close()
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        assert index.scrub()
        stored = b"".join(p.read_bytes() for p in (tmp_path / "sfm_m_32").iterdir())
        assert rows[9].tobytes() not in stored and rows[10].tobytes() in stored
    finally:
        index.close()


@pytest.mark.parametrize("where", [None, {"tenth": True}], ids=["unfiltered", "10%"])
def test_the_graph_walk_finds_what_exact_scoring_finds(tmp_path: Path, where: object) -> None:
    rows = vectors(5000, seed=3)
    walked = LocalIndex(tmp_path / "walk", model="m", dim=DIM, exact_rows=0, exact_share=0.0)
    exact = LocalIndex(tmp_path / "exact", model="m", dim=DIM, exact_rows=10**9)
    try:
        for index in (walked, exact):
            index.upsert(records(rows))
        node = filters.parse(where)
        found = 0
        for query in vectors(50, seed=4):
            truth = set(top(exact, query, where=node))
            assert len(truth) == 10
            found += len(truth & set(top(walked, query, where=node)))
        assert found / 500 >= 0.97
    finally:
        walked.close()
        exact.close()


def test_a_save_takes_the_vectors_out_of_the_log_and_gives_the_space_back(
    tmp_path: Path,
) -> None:
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    index.upsert(records(vectors(3000)))
    log = index._db
    assert log.execute("SELECT count(*) FROM pending").fetchone() == (3000,)
    logged = log.execute("PRAGMA page_count").fetchone()[0]
    index.save()
    assert log.execute("SELECT count(*) FROM pending").fetchone() == (0,)
    assert log.execute("PRAGMA freelist_count").fetchone() == (0,)
    assert log.execute("PRAGMA page_count").fetchone()[0] < logged / 2
    index.close()
    reopened = LocalIndex(tmp_path, model="m", dim=DIM)  # from the graph files alone
    try:
        assert reopened.count() == 3000 and top(reopened, vectors(3000)[42])[0] == "m42"
    finally:
        reopened.close()


def test_damaged_graph_files_start_empty_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    index.upsert(records(vectors(50)))
    index.close()
    graph = tmp_path / "sfm_m_32" / "vector.faiss"
    graph.write_bytes(graph.read_bytes()[:100])
    with caplog.at_level(logging.ERROR):
        reopened = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        assert reopened.count() == 0
        assert "sfm reindex" in caplog.text
        reopened.upsert(records(vectors(5)))  # and it works again
        assert reopened.count() == 5
    finally:
        reopened.close()


def test_one_process_owns_the_files(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        with pytest.raises(IndexLocked):
            LocalIndex(tmp_path, model="m", dim=DIM)
    finally:
        index.close()
    LocalIndex(tmp_path, model="m", dim=DIM).close()  # closed is released


def test_a_change_of_fields_alone_is_made_in_place(tmp_path: Path) -> None:
    rows = vectors(20)
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        index.upsert(records(rows))
        entries = len(index._columns)
        changed = [
            VectorRecord(**{**r.__dict__, "importance": 0.9, "namespace": "other"})
            for r in records(rows[:3])
        ]
        index.upsert(changed)
        assert len(index._columns) == entries  # no new graph entries
        important = filters.parse({"importance": {"$gt": 0.8}})
        assert sorted(top(index, rows[0], namespace="other", where=important)) == [
            "m0",
            "m1",
            "m2",
        ]
        assert "m0" not in top(index, rows[0])  # gone from its old namespace
        moved = VectorRecord(**{**changed[0].__dict__, "vector": rows[19]})
        index.upsert([moved])  # a new vector: a new entry, the old one dead
        assert len(index._columns) == entries + 1 and index.count() == 20
        assert top(index, rows[19], namespace="other")[0] == "m0"
    finally:
        index.close()


def test_searches_and_writes_from_many_threads(tmp_path: Path) -> None:
    rows = vectors(2000, seed=5)
    index = LocalIndex(tmp_path, model="m", dim=DIM, save_every=500)
    index.upsert(records(rows[:200]))
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(part: int) -> None:
        try:
            for start in range(200 + part * 450, 200 + (part + 1) * 450, 50):
                index.upsert(records(rows[start : start + 50], start=start))
        except BaseException as exc:
            errors.append(exc)

    def search() -> None:
        try:
            while not stop.is_set():
                assert top(index, rows[3])[0] == "m3"
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(p,)) for p in range(4)]
    readers = [threading.Thread(target=search) for _ in range(3)]
    try:
        for thread in writers + readers:
            thread.start()
        for thread in writers:
            thread.join()
        stop.set()
        for thread in readers:
            thread.join()
        assert not errors
        assert index.count() == 2000
        assert all(top(index, rows[i])[0] == f"m{i}" for i in range(0, 2000, 97))
    finally:
        index.close()


def test_an_earlier_versions_lite_file_is_named_while_the_index_is_empty(tmp_path: Path) -> None:
    lite = tmp_path / "milvus.db"
    lite.write_bytes(b"an earlier version's index")
    index = LocalIndex(tmp_path / "vectors", model="m", dim=DIM, predecessor=lite)
    try:
        (note,) = index.notes()
        assert "milvus.db" in note and "sfm reindex" in note
        index.upsert(records(vectors(1)))
        assert index.notes() == []
    finally:
        index.close()


def test_the_beam_grows_with_the_index_and_narrows_filters() -> None:
    assert beam(256, 5_000, 1.0) == beam(256, 100_000, 1.0) == 256  # as configured
    assert 1000 <= beam(256, 1_000_000, 1.0) <= 1050  # the beam 0.99 needed at 1M
    assert beam(256, 100_000, 0.1) == round(256 / 0.1**0.5)  # a 10% filter: about 810
    assert beam(256, 100_000, 0.0001) == 4 * 256  # widened at most 4x
    sizes = [10**k for k in range(3, 8)]
    assert [beam(256, n, 0.5) for n in sizes] == sorted(beam(256, n, 0.5) for n in sizes)


def test_new_tokens_make_a_new_entry_and_the_old_ones_stop_matching(tmp_path: Path) -> None:
    rows = vectors(3)
    index = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        index.upsert(records(rows))
        (changed,) = records(rows[:1])
        index.upsert([dataclasses.replace(changed, lexical="fresh words")])
        assert len(index._columns) == 4  # same vector and metadata, other tokens: relabelled
        assert lexical(index, "fresh") == ["m0"]
        assert lexical(index, "w0") == []
        assert lexical(index, "common") == ["m1", "m2"]
    finally:
        index.close()
    reopened = LocalIndex(tmp_path, model="m", dim=DIM)
    try:  # the postings are built again from the log
        assert lexical(reopened, "fresh") == ["m0"] and lexical(reopened, "w0") == []
        assert lexical(reopened, "common", where=filters.parse({"tenth": False})) == ["m1", "m2"]
    finally:
        reopened.close()


def test_a_log_from_before_the_lexical_legs_starts_empty_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its entries have no tokens to search: an index that found them by vector but never by
    word would be wrong without a sign; `sfm reindex` writes them again."""
    directory = tmp_path / "sfm_m_32"
    directory.mkdir()
    old = sqlite3.connect(directory / "entries.sqlite")
    old.executescript(
        "CREATE TABLE entries (label INTEGER PRIMARY KEY, id TEXT NOT NULL, "
        "embedding_id TEXT NOT NULL, tenant TEXT NOT NULL, namespace TEXT NOT NULL, "
        "type TEXT NOT NULL, importance REAL NOT NULL, created_at_ms INTEGER NOT NULL, "
        "metadata TEXT NOT NULL, live INTEGER NOT NULL);"
        "INSERT INTO entries VALUES (0, 'm0', 'v0', 't', 'ns', 'episodic', 0.5, 0, '{}', 1);"
    )
    old.close()
    with caplog.at_level(logging.ERROR):
        index = LocalIndex(tmp_path, model="m", dim=DIM)
    try:
        assert index.count() == 0 and "sfm reindex" in caplog.text
        index.upsert(records(vectors(2)))
        assert lexical(index, "common") == ["m0", "m1"]
    finally:
        index.close()


def test_equal_scores_come_in_id_order_whatever_the_writing_order(tmp_path: Path) -> None:
    """Two copies of one memory set written in opposite orders answer alike (an imported
    export answers as the original)."""
    rows = vectors(3, seed=4)
    same = [rows[0], rows[0], rows[0], rows[1], rows[2]]  # three equal vectors and texts
    made = [dataclasses.replace(r, lexical="common") for r in records(np.stack(same))]
    answers = []
    for name, order in (("forward", made), ("backward", made[::-1])):
        index = LocalIndex(tmp_path / name, model="m", dim=DIM)
        try:
            index.upsert(order)
            answers.append((top(index, rows[0]), lexical(index, "common")))
        finally:
            index.close()
    assert answers[0] == answers[1]
    assert answers[0][0][:3] == ["m0", "m1", "m2"] and answers[0][1][:3] == ["m0", "m1", "m2"]
