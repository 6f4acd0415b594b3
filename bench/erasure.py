"""Benchmark of erasure: one subject's memories out of many, with other work going on.

    .venv/bin/python bench/erasure.py [--n 100000] [--subject 10000]
        [--backend embedded|postgres+redis] [--out docs/benchmarks.md]

A fresh temporary data directory holds N synthetic memories in 20 namespaces (each with a
`follows` chain; a namespace's episodes 20 s apart, so erased ones have neighbours whose
context must be rewritten); about one in N/subject, picked at random, belongs to the
subject (`user_id: subject`), the others to 500 other users. They are loaded with the
service's own row and index-record builders and random unit vectors (erasure never looks at
vector values, and running the model on 100,000 texts would take the whole budget).
Then, in one run:

- the baseline: one other user's memories deleted one by one (`DELETE /memory/{id}`'s
  service call), as a client without purge would;
- the dry run and the purge of the subject, timed by stage;
- searches (hybrid, query embedded) and single stores in other namespaces on a second
  thread before and during the purge: their latency and errors.

The report replaces the `erasure` section of --out.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import numpy as np
import run  # bench/run.py

NAMESPACES = 20
OTHER_USERS = 500
CHUNK = 2000
BACKGROUND_SECONDS = 8.0


class Background(threading.Thread):
    """Searches (4 of 5 requests) and single stores in other namespaces, back to back."""

    def __init__(self, questions: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.questions = questions
        self.stop = threading.Event()
        self.samples: list[tuple[float, str, float, bool]] = []  # (start, kind, ms, ok)

    def run(self) -> None:
        from django.db import connections

        from somafractalmemory.memories import services

        n = 0
        while not self.stop.is_set():
            n += 1
            start = time.monotonic()
            kind = "store" if n % 5 == 0 else "search"
            try:
                if kind == "store":
                    item = services.NewMemory(
                        content=f"Live note {n}: the meeting moved to room {n % 40}.",
                        namespace="live",
                        metadata={"user_id": "live"},
                    )
                    services.store_many([item])
                else:
                    query = services.Query(namespace=f"ns-{n % NAMESPACES}", top_k=10)
                    services.recall(self.questions[n % len(self.questions)], query)
                ok = True
            except Exception:
                ok = False
            self.samples.append((start, kind, (time.monotonic() - start) * 1000, ok))
        connections.close_all()

    def between(self, start: float, end: float) -> dict[str, Any]:
        picked = [s for s in self.samples if start <= s[0] < end]
        out: dict[str, Any] = {"errors": sum(not s[3] for s in picked)}
        for kind in ("search", "store"):
            ms = [s[2] for s in picked if s[1] == kind and s[3]]
            out[kind] = run.Stats.of(ms) if ms else None
            out[f"{kind}_max"] = max(ms) if ms else float("nan")
        return out


def load(n: int, every: int) -> dict[str, int]:
    """N memories: rows in bulk, index records with random unit vectors, follows chains."""
    from somafractalmemory import backends
    from somafractalmemory.memories import identity, indexing
    from somafractalmemory.memories.models import Link, Memory

    index = backends.vector_index()
    rng = np.random.default_rng(5)
    picks = rng.random(n) < 1 / every  # the subject's memories, spread over namespaces
    items = corpus.memories(n)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    counts = {"subject": 0, "links": 0}
    last: dict[str, str] = {}
    progress = run.Progress("load", n)
    for at in range(0, n, CHUNK):
        rows, edges = [], []
        for i in range(at, min(at + CHUNK, n)):
            item = items[i]
            user = "subject" if picks[i] else f"user-{i % OTHER_USERS}"
            counts["subject"] += user == "subject"
            namespace = f"ns-{i % NAMESPACES}"
            memory = Memory(
                id=identity.new_id("mem"),
                tenant_id="default",
                namespace=namespace,
                type="episodic",
                metadata={**item.metadata, "user_id": user},
                importance=item.importance,
                created_at=start + timedelta(seconds=i),
                stored_at=now,
            )
            memory.set_content(item.content)
            rows.append(memory)
            if namespace in last:
                follows = Link(
                    tenant_id="default",
                    source_id=memory.id,
                    target_id=last[namespace],
                    kind="follows",
                )
                edges.append(follows)
            last[namespace] = memory.id
        Memory.objects.bulk_create(rows)
        Link.objects.bulk_create(edges)
        counts["links"] += len(edges)
        vectors = rng.standard_normal((len(rows), backends.embedder().dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index.upsert([indexing.vector_record(m, v) for m, v in zip(rows, vectors, strict=True)])
        progress.update(min(at + CHUNK, n))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--subject", type=int, default=10_000, help="Memories of the subject.")
    parser.add_argument("--backend", choices=run.BACKENDS, default="embedded")
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    when = datetime.now(UTC)
    others = run.OtherLoad()
    others.start()
    with contextlib.ExitStack() as stack:
        made = tempfile.TemporaryDirectory(prefix="sfm-erasure-", ignore_cleanup_errors=True)
        tmp = Path(stack.enter_context(made))
        config = tmp / "defaults.yaml"
        config.write_text("# bench/erasure.py: built-in defaults only\n")
        extra: dict[str, str] = {}
        if args.backend == "postgres+redis":
            run.flush_redis()
            extra = {
                "SFM_DATABASE_URL": stack.enter_context(run.postgres_database()),
                "SFM_REDIS_URL": run.REDIS_URL,
            }
        run.use_env(run.settings_env(tmp / "data", config, extra))
        run.start_django()
        run.open_backends()
        from somafractalmemory import backends
        from somafractalmemory.memories import services
        from somafractalmemory.memories.jobs import erasure
        from somafractalmemory.memories.models import Memory

        clock = run.Clock()
        counts = load(args.n, max(1, args.n // args.subject))
        load_s = clock.seconds
        run.log(f"[load] {args.n} memories in {load_s:.1f} s")

        # Baseline: one other user's memories, deleted one by one.
        ids = list(
            Memory.objects.filter(namespace="ns-1")
            .values_list("id", flat=True)
            .order_by("id")[:200]
        )
        clock = run.Clock()
        for memory_id in ids:
            services.delete(memory_id)
        one_by_one_ms = clock.ms / len(ids)

        background = Background(corpus.questions(300))
        background.start()
        time.sleep(BACKGROUND_SECONDS)  # the others' work before the purge
        clock = run.Clock()
        plan = erasure.purge(tenant="default", spec={"user_id": "subject"}, dry_run=True)
        dry_s = clock.seconds
        began = time.monotonic()
        stages: dict[str, float] = {"preparing": began}

        def report(done: int, total: int, stage: str = "") -> None:
            stages.setdefault(stage, time.monotonic())

        done = erasure.purge(tenant="default", spec={"user_id": "subject"}, progress=report)
        ended = time.monotonic()
        time.sleep(2)
        background.stop.set()
        background.join(timeout=60)
        before = background.between(began - BACKGROUND_SECONDS - dry_s, began - dry_s)
        during = background.between(began, ended)
        left = Memory.objects.filter(namespace__startswith="ns-").count()
        indexed = backends.vector_index().count()
    purge_s = ended - began
    marks = [*sorted(stages.items(), key=lambda kv: kv[1]), ("end", ended)]
    phases = {name: marks[k + 1][1] - at for k, (name, at) in enumerate(marks[:-1])}
    projected_s = one_by_one_ms * done.memories / 1000
    rewritten = max(1, done.neighbours_rewritten)
    rewrite_ms = phases["rewriting neighbours and parents"] * 1000 / rewritten
    lines = [
        f"## Erasure: one subject's {done.memories:,} memories out of {args.n:,} ({args.backend})",
        "",
        f"`bench/erasure.py --backend {args.backend}`, {when:%Y-%m-%d %H:%M} UTC, code "
        f"{run.revision()}; other processes during the run: {others.finish()[0]}. "
        f"{args.n:,} memories in {NAMESPACES} namespaces with `follows` chains "
        f"({counts['links']:,} links), loaded in {load_s:.0f} s with the service's row and "
        "index-record builders and random unit vectors (the erasure never reads vector "
        "values); no consolidation.",
        "",
        "| what | time |",
        "|---|---:|",
        f"| dry run (select by sealed metadata, count links and parents) | {dry_s:.2f} s |",
        f"| purge, total | {purge_s:.2f} s |",
        *(f"| — {name} | {seconds:.2f} s |" for name, seconds in phases.items()),
        f"| baseline: deleting one memory at a time (mean of 200) | {one_by_one_ms:.1f} ms |",
        f"| baseline projected to {done.memories:,} memories | {projected_s:.0f} s |",
        "",
        f"Purge / one-at-a-time: **{purge_s / projected_s:.3f}** "
        f"({projected_s / purge_s:.0f}x faster). Erased: {done.memories:,} memories, "
        f"{done.links:,} links, {done.vectors:,} vectors, {done.neighbours_rewritten:,} "
        f"neighbours' contexts rewritten, {done.cache_entries} cached queries; scrubbed: "
        f"{done.scrubbed}. The dry run predicted {plan.memories:,} memories and "
        f"{plan.links:,} links. Afterwards SQL holds {left:,} of the other users' memories "
        f"and the index {indexed:,} entries (the live namespace included). Rewriting a "
        "neighbour's context (its span's rows and vectors read, the record re-upserted) costs "
        f"{rewrite_ms:.1f} ms and dominates when the subject's episodes are interleaved "
        "with others'.",
        "",
        "Other work on a second thread (searches in the other namespaces, 4 of 5 requests, "
        "query embedded; single stores in another namespace), "
        f"{BACKGROUND_SECONDS:.0f} s before the purge and during it:",
        "",
        "| window | search p50 ms | search p99 ms | search max ms | store p50 ms | "
        "store max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {w['search'].p50:.1f} | {w['search'].p99:.1f} | "
            f"{w['search_max']:.0f} | {w['store'].p50:.1f} | {w['store_max']:.0f} | "
            f"{w['errors']} |"
            for name, w in (("before", before), ("during the purge", during))
            if w["search"] and w["store"]
        ),
        "",
    ]
    body = "\n".join(lines)
    run.write_report(args.out, f"erasure-{args.backend}", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
