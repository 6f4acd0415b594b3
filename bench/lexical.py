"""The embedded default's lexical legs alone: the local engine's BM25 (vectors/postings.py)
against SQLite FTS5's `bm25()` (the earlier legs, and the fallback), on the same keyed tokens
of the bench corpus, in one run.

    .venv/bin/python bench/lexical.py --sizes 100000,1000000   # about 5 min at 1M

No model is needed: the tokens are the service's (`keyed_tokens`, one tenant's key). Each
memory's context document is itself with the memories before and after it (the shape of the
service's context tokens; the bench corpus has no time neighbours to speak of). One search
asks for the legs' pool (40) of one question; both engines see the whole index (no filter).
Agreement: how much of FTS5's top 10 the local engine's top 10 holds (their idf formulas
differ: FTS5 drops Lucene's +1, so common terms weigh less).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import corpus  # bench/corpus.py
import numpy as np
import run  # bench/run.py

from somafractalmemory.retrieval.lexical import keyed_tokens
from somafractalmemory.vectors import postings

POOL = 40
KEY = b"bench-lexical-key-32-bytes-long!"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timed(search: object, queries: Sequence[object]) -> tuple[float, float]:
    """p50 and p99 ms of `search` over `queries`, after five untimed ones."""
    for q in queries[:5]:
        search(q)  # type: ignore[operator]
    spent = []
    for q in queries:
        started = time.perf_counter()
        search(q)  # type: ignore[operator]
        spent.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(spent, 50)), float(np.percentile(spent, 99))


def measure(n: int, questions: Sequence[str]) -> list[str]:
    _log(f"[{n:,}] tokens")
    texts = [keyed_tokens(item.content, KEY) for item in corpus.memories(n)]
    contexts = [" ".join(texts[max(0, i - 1) : i + 2]) for i in range(n)]
    asked = [" ".join(dict.fromkeys(keyed_tokens(q, KEY).split())) for q in questions]
    return [
        _field(n, field, docs, asked) for field, docs in (("memory", texts), ("context", contexts))
    ]


def _field(n: int, field: str, docs: Sequence[str], asked: Sequence[str]) -> str:
    """One table row: both engines over `docs`, asked `asked`."""
    _log(f"[{n:,}] {field}: postings")
    held, live = postings.Postings(), np.ones(n, dtype=np.bool_)
    started = time.perf_counter()
    for start in range(0, n, 100_000):  # as the engine opens: 100,000 entries a segment
        held.add([postings.parse(d) for d in docs[start : start + 100_000]])
        held.compact(live)
    built = time.perf_counter() - started
    terms = [postings.parse(q) for q in asked]
    local = _timed(lambda q: held.top(q, live, POOL), terms)
    _log(f"[{n:,}] {field}: FTS5")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE f USING fts5(t, tokenize='unicode61')")
    db.executemany("INSERT INTO f(rowid, t) VALUES (?, ?)", enumerate(docs))
    sql = "SELECT rowid, -bm25(f) AS s FROM f WHERE f MATCH ? ORDER BY s DESC LIMIT ?"
    matches = [" OR ".join(f'"{t}"' for t in q.split()) for q in asked]
    fts = _timed(lambda m: db.execute(sql, (m, POOL)).fetchall(), matches)
    agree = []
    for q, m in zip(terms, matches, strict=True):
        theirs = {r for r, _ in db.execute(sql, (m, 10))}
        ours = {label for label, _ in held.top(q, live, 10)}
        agree.append(len(theirs & ours) / max(1, len(theirs)))
    db.close()
    return (
        f"| {n:,} | {field} | {held.postings():,} | {built:.1f} | {local[0]:.2f} / "
        f"{local[1]:.2f} | {fts[0]:.2f} / {fts[1]:.2f} | {fts[0] / local[0]:.0f}x | "
        f"{np.mean(agree):.2f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    when, code = datetime.now(UTC), run.revision()
    others = run.OtherLoad()
    others.start()
    clock = run.Clock()
    questions = corpus.questions(args.queries)
    rows = [row for n in map(int, args.sizes.split(",")) for row in measure(n, questions)]
    info = run.RunInfo(when, code, "", *others.finish(), clock.seconds)
    box = run.machine()
    lines = [
        "## Lexical legs: in-process BM25 against SQLite FTS5",
        "",
        f"`bench/lexical.py`, {info.when:%Y-%m-%d %H:%M} UTC, code {info.code}; {box['cpu']}, "
        f"{box['cores']} cores, {box['ram']}; other processes during the run: {info.others}. "
        f"The bench corpus's keyed tokens, {args.queries} questions, the best {POOL} of each "
        "(one search on one thread, whole index, no filter); a context document is a memory "
        "with the ones before and after it. Build: the postings from the tokens, in segments "
        f"of 100,000 as the engine opens. Total {info.seconds / 60:.1f} min.",
        "",
        *run.render_warning(info),
        "| memories | field | postings | build s | BM25 in process p50 / p99 ms | "
        "FTS5 p50 / p99 ms | FTS5 / in process (p50) | agreement@10 with FTS5 |",
        "|---:|---|---:|---:|---|---|---:|---:|",
        *rows,
    ]
    run.write_report(args.out, "lexical", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
