"""The cost of validity in search: memories closed (superseded) or expired leave every search,
checked on each candidate's row at query time. How much of a search is that, at 100k memories?

    .venv/bin/python bench/validity.py [--n 100000] [--queries 200] [--out docs/benchmarks.md]

One temporary data directory on the built-in defaults (SQLite, the local vector engine, the
ONNX query encoder), in process. Memories are the synthetic corpus (bench/corpus.py) loaded
in bulk (bench/scale.py's loader) with seeded random unit vectors: the filter's cost does not
depend on what the vectors mean, and encoding 100k texts would take most of the run. Each
question is searched (hybrid, top 10, `reinforce` off) with the filter as it runs and with
`hidden_because` replaced by a no-op, alternating which goes first; and numpy brute force
over the same vectors is the machine's baseline in the same run. Then a share of the
memories is closed (their `valid_until` set in the past: superseded versions) and the
questions are asked again: fewer candidates stand, and a search whose legs came back full
but short of top_k asks them again with a wider pool (counted). The three columns the
filter reads are also timed alone: the candidates' SELECT with and without them.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import numpy as np
import run  # bench/run.py
import scale  # bench/scale.py

WARM_UP = 20
SHARES = (0.2, 0.9)
"""Shares of the memories closed in the second and third phase."""


def unit_vectors(n: int, dim: int, seed: int = 3) -> run.Matrix:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


@contextmanager
def filter_off() -> Any:
    """Search as before validity: no candidate is hidden."""
    from somafractalmemory.memories import recall

    kept = recall.hidden_because
    recall.hidden_because = lambda *args, **kwargs: None
    try:
        yield
    finally:
        recall.hidden_because = kept


class Counting:
    """Counts the calls a search makes of itself with a wider pool (`recall.recall` through
    its module's name; the searches themselves go through `services.recall`)."""

    def __init__(self) -> None:
        from somafractalmemory.memories import recall

        self.module, self.calls, self.inner = recall, 0, recall.recall

    def __enter__(self) -> Counting:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self.inner(*args, **kwargs)

        self.module.recall = counted
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.recall = self.inner


def search_ms(text: str) -> float:
    from somafractalmemory.memories import services

    clock = run.Clock()
    services.recall(text, services.Query(top_k=10, reinforce=False))
    return clock.ms


def paired(questions: Sequence[str]) -> tuple[run.Stats, run.Stats, float]:
    """Each question with the filter on and off (alternating which first): both latency
    series and the median of the per-question ratio on/off."""
    on, off, ratios = [], [], []
    for n, text in enumerate(questions):
        with filter_off():  # untimed: its query vector is cached for both arms
            search_ms(text)
        if n % 2:
            with filter_off():
                b = search_ms(text)
            a = search_ms(text)
        else:
            a = search_ms(text)
            with filter_off():
                b = search_ms(text)
        on.append(a)
        off.append(b)
        ratios.append(a / b)
    return run.Stats.of(on), run.Stats.of(off), float(np.median(ratios))


def columns_ms(ids: Sequence[str], repeats: int = 200) -> tuple[float, float]:
    """Median ms of the candidates' SELECT (RANKING_FIELDS) with and without the three
    validity columns, for these ids."""
    from django.db import connection

    from somafractalmemory.memories import recall

    without = tuple(f for f in recall.RANKING_FIELDS if f not in recall.VALIDITY_FIELDS)
    out = []
    for fields in (recall.RANKING_FIELDS, without):
        times = []
        for _ in range(repeats):
            clock = run.Clock()
            with connection.cursor() as cursor:
                cursor.execute(recall._by_id(fields, list(ids)), list(ids))
                cursor.fetchall()
            times.append(clock.ms)
        out.append(float(np.median(times)))
    return out[0], out[1]


def close_share(share: float, seed: int = 5) -> int:
    """Close `share` of the memories (valid until yesterday); returns how many are closed."""
    from somafractalmemory.memories.models import Memory

    ids = list(Memory.objects.values_list("id", flat=True))
    chosen = random.Random(seed).sample(ids, int(len(ids) * share))
    past = datetime.now(UTC) - timedelta(days=1)
    for start in range(0, len(chosen), 5000):
        Memory.objects.filter(id__in=chosen[start : start + 5000]).update(valid_until=past)
    return Memory.objects.filter(valid_until__isnull=False).count()


def phase(questions: Sequence[str]) -> dict[str, Any]:
    with Counting() as counting:
        on, off, ratio = paired(questions)
    widened = counting.calls  # services.recall is not patched: these are the wider calls
    return {"on": on, "off": off, "ratio": ratio, "widened": widened}


def render(
    args: argparse.Namespace,
    info: dict[str, Any],
    phases: list[tuple[str, dict[str, Any]]],
    brute: run.Stats,
    columns: tuple[float, float],
) -> str:
    lines = [
        "## Validity in search (bench/validity.py)",
        "",
        f"{info['when']:%Y-%m-%d %H:%M} UTC, code {info['code']}, {info['machine']['cpu']} "
        f"(cores {info['machine'].get('cores', '?')}), {args.n:,} memories "
        f"(synthetic corpus, random unit vectors), {args.queries} questions,"
        " embedded default in process (SQLite, local engine), hybrid top 10. "
        "`on`: the filter as it runs; `off`: `hidden_because` a no-op (every candidate "
        "stands). Ratio: median over questions of on/off, each question searched both ways "
        "back to back.",
        "",
        "| memories closed | on p50 ms | off p50 ms | on p95 ms | off p95 ms | median on/off | "
        "searches widened | numpy brute force p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, p in phases:
        lines.append(
            f"| {label} | {p['on'].p50:.2f} | {p['off'].p50:.2f} | {p['on'].p95:.2f} | "
            f"{p['off'].p95:.2f} | {p['ratio']:.3f} | {p['widened']} of {args.queries} | "
            f"{brute.p50:.2f} |"
        )
    with_cols, without_cols = columns
    lines += [
        "",
        f"The candidates' SELECT by id (160 ids, median of 200): {with_cols:.3f} ms with the "
        f"three validity columns, {without_cols:.3f} ms without. With memories closed, `off` "
        "is not a like-for-like answer: it returns the closed ones too.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="sfm-validity-") as tmp:
        config = Path(tmp) / "sfm.toml"
        config.write_text("")
        run.use_env(run.settings_env(Path(tmp) / "data", config))
        run.start_django()
        from somafractalmemory import backends

        dim = backends.embedder().dim
        items = corpus.memories(args.n)
        matrix = unit_vectors(args.n, dim)
        scale.load(items, matrix, 0)
        from somafractalmemory.memories.models import Memory

        questions = corpus.questions(WARM_UP + args.queries)
        for text in questions[:WARM_UP]:
            search_ms(text)
        asked = questions[WARM_UP:]
        run.log("searching: every memory valid")
        phases = [("none", phase(asked))]
        probes = unit_vectors(args.queries, dim, seed=9)
        _, brute = run.time_numpy(matrix, probes)
        ids = list(Memory.objects.values_list("id", flat=True)[:160])
        columns = columns_ms(ids)
        for share in SHARES:
            closed = close_share(share)
            run.log(f"searching: {closed:,} memories closed")
            phases.append((f"{closed:,} ({share:.0%})", phase(asked)))
    info = {"when": started, "code": run.revision(), "machine": run.machine()}
    body = render(args, info, phases, brute, columns)
    print(body)
    run.write_report(args.out, "validity", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
