"""Benchmark of the fractal memory: consolidation time as episodes grow, and the cost of
auto-linking on store.

    .venv/bin/python bench/fractal.py [--sizes 2500,5000,10000] [--singles 200]
        [--out docs/benchmarks.md]

Embedded default settings in a fresh temporary data directory. For each size n, n synthetic
memories (bench/corpus.py, stored as episodes, as many per day at every size) go into a
namespace of their own; then `consolidation.consolidate` runs on it three times: from scratch,
again with nothing new (idempotent), and after 1% more episodes (incremental). Then single
stores (as `POST /memory/store` does them) and batches of 200 into the largest namespace,
alternating auto-linking on and off so that both see the same machine. The report replaces
the `fractal` section of --out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import run  # bench/run.py: clocks, machine facts, report writing

BATCH = 200


@dataclass(frozen=True)
class Scaling:
    n: int
    store_s: float
    first_s: float
    again_s: float
    incremental_s: float
    added: int
    result: dict[str, Any]


def episodes(items: Sequence[corpus.Item]) -> list[Any]:
    from somafractalmemory.memories.services import NewMemory

    return [
        NewMemory(
            content=i.content,
            type="episodic",
            importance=i.importance,
            metadata=i.metadata,
            created_at=i.created_at,
            namespace=None,
        )
        for i in items
    ]


def store_all(items: Sequence[Any], namespace: str) -> float:
    from somafractalmemory.memories.services import remember_many

    clock = run.Clock()
    for start in range(0, len(items), 1000):
        remember_many([replace(i, namespace=namespace) for i in items[start : start + 1000]])
    return clock.seconds


def at_density(items: Sequence[Any], factor: float) -> list[Any]:
    """The items with their event times squeezed by `factor` towards the earliest one, so
    that every size has as many episodes per day as the largest."""
    start = min(i.created_at for i in items)
    return [replace(i, created_at=start + (i.created_at - start) * factor) for i in items]


def consolidation(n: int, items: Sequence[Any], extra: Sequence[Any]) -> Scaling:
    from somafractalmemory.memories.jobs import consolidation

    namespace = f"fractal-{n}"
    stored = store_all(items, namespace)
    run.log(f"[consolidate] {n:,} episodes stored in {stored:.1f} s")
    clock = run.Clock()
    result = consolidation.consolidate(namespace).as_dict()
    first = clock.seconds
    run.log(f"[consolidate] {n:,}: {first:.1f} s, {result['created']:,} parents")
    clock = run.Clock()
    again = consolidation.consolidate(namespace).as_dict()
    again_s = clock.seconds
    if again["created"] or again["updated"] or again["refreshed"]:
        raise RuntimeError(f"re-run changed the tree: {again}")
    store_all(extra, namespace)
    clock = run.Clock()
    consolidation.consolidate(namespace)
    incremental = clock.seconds
    return Scaling(n, stored, first, again_s, incremental, len(extra), result)


def set_auto_link(on: bool) -> None:
    from somafractalmemory.conf import get_config

    os.environ["SFM_AUTO_LINK"] = "true" if on else "false"
    get_config.cache_clear()
    assert get_config().auto_link is on


def store_costs(items: Sequence[Any], namespace: str, singles: int) -> dict[str, run.Stats]:
    """Single stores and batches, alternating auto-linking on and off."""
    from somafractalmemory.memories import linking
    from somafractalmemory.memories.services import store_many

    times: dict[str, list[float]] = {
        "single on": [],
        "single off": [],
        "batch on": [],
        "batch off": [],
    }
    pool = iter(replace(i, namespace=namespace) for i in items)
    for k in range(singles):
        on = k % 2 == 0
        set_auto_link(on)
        clock = run.Clock()
        store_many([next(pool)], report_near=True)
        times[f"single {'on' if on else 'off'}"].append(clock.ms)
    background: list[float] = []
    for k in range(6):
        on = k % 2 == 0
        set_auto_link(on)
        chunk = [next(pool) for _ in range(BATCH)]
        clock = run.Clock()
        store_many(chunk)
        times[f"batch {'on' if on else 'off'}"].append(clock.ms)
        # A batch's links to the index are made on a background thread after the answer:
        # wait for them (untimed above), so that they do not slow the next batch down.
        clock = run.Clock()
        linking.POOL.submit(lambda: None).result()
        if on:
            background.append(clock.ms)
    set_auto_link(True)
    stats = {k: run.Stats.of(v) for k, v in times.items()}
    stats["batch background"] = run.Stats.of(background)
    return stats


def render(scaling: list[Scaling], costs: dict[str, run.Stats], info: dict[str, str]) -> str:
    base = scaling[0]
    lines = [
        "## Fractal memory: consolidation and auto-linking (embedded)",
        "",
        f"`make bench-fractal` (`bench/fractal.py`), {info['when']}, code {info['code']}, "
        f"{info['cpu']}; other processes during the run: {info['others']}.",
        "",
        "Consolidation of one namespace of n episodes (synthetic, extractive summarizer; the "
        "same number of episodes per day at every size: the largest spans four years), from "
        "scratch, re-run with nothing new, and after 1% more "
        "episodes. *vs n log n* is (time / n log n) divided by the same for the smallest n: "
        "1.00 means n log n scaling, below 1 better.",
        "",
        "| n | store s | consolidate s | ms per episode | vs n log n | parents (by level) "
        "| re-run s | +1% then re-run s |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for s in scaling:
        per_nlogn = s.first_s / (s.n * math.log(s.n))
        ratio = per_nlogn / (base.first_s / (base.n * math.log(base.n)))
        levels = " / ".join(str(level["created"]) for level in s.result["levels"])
        lines.append(
            f"| {s.n:,} | {s.store_s:.1f} | {s.first_s:.1f} | {1000 * s.first_s / s.n:.2f} | "
            f"{ratio:.2f} | {levels} | {s.again_s:.2f} | {s.incremental_s:.2f} |"
        )
    single = costs["single on"].p50 / costs["single off"].p50
    batch = costs["batch on"].p50 / costs["batch off"].p50
    lines += [
        "",
        f"Store cost of auto-linking, into the namespace of {scaling[-1].n:,} "
        "(interleaved on/off):",
        "",
        "| store | auto_link | calls | p50 ms | p95 ms | mean ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, stats in costs.items():
        kind, on = key.split()
        if on == "background":
            lines.append(
                f"| … then its links to the index, on the link thread after the answer | on | "
                f"{stats.count} | {stats.p50:.1f} | {stats.p95:.1f} | {stats.mean:.1f} |"
            )
            continue
        what = "one memory (`report_near`, as the API)" if kind == "single" else f"batch of {BATCH}"
        lines.append(
            f"| {what} | {on} | {stats.count} | {stats.p50:.1f} | {stats.p95:.1f} | "
            f"{stats.mean:.1f} |"
        )
    lines += [
        "",
        f"With / without auto-linking, p50: single store **{single:.2f}x**, batch "
        f"**{batch:.2f}x** (target: at most 1.5x).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="2500,5000,10000")
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    others = run.OtherLoad()
    others.start()
    when = datetime.now(UTC)
    extra_total = sum(max(1, n // 100) for n in sizes)
    total = sum(sizes) + extra_total + args.singles + 6 * BATCH
    generated = corpus.memories(total)
    with tempfile.TemporaryDirectory(prefix="sfm-fractal-", ignore_cleanup_errors=True) as tmp:
        config = Path(tmp) / "defaults.yaml"
        config.write_text("# bench/fractal.py: built-in defaults only\n")
        run.use_env(run.settings_env(Path(tmp) / "data", config))
        run.start_django()
        run.open_backends()
        all_items = episodes(generated)
        scaling, offset = [], 0
        for n in sizes:
            extra = max(1, n // 100)
            chunk = at_density(all_items[offset : offset + n + extra], n / sizes[-1])
            offset += n + extra
            scaling.append(consolidation(n, chunk[:n], chunk[n:]))
        costs = store_costs(all_items[offset:], f"fractal-{sizes[-1]}", args.singles)
    box = run.machine()
    info = {
        "when": f"{when:%Y-%m-%d %H:%M} UTC",
        "code": run.revision(),
        "cpu": f"{box['cpu']}, {box['cores']} cores",
        "others": others.finish()[0],
    }
    body = render(scaling, costs, info)
    run.write_report(args.out, "fractal", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
