"""The embedding models side by side, in one run: the bundled all-MiniLM-L6-v2 (384-d) and
all-mpnet-base-v2 (768-d, `make model-mpnet`), both on the ONNX runtime.

    .venv/bin/python bench/models.py [--locomo NAME=F.json ...] [--out docs/benchmarks.md]

For each model: one query at a time (300 synthetic questions, as a search embeds them) by
the full export and by the int8 one (`query_encoder`), how close the int8 vectors are to the
full ones, batch throughput (1,000 synthetic memories in batches of 64, as stores embed
them, always in full), and the bytes each vector takes in the index. With the JSON files
`bench/locomo_eval.py --json` writes (one per model, `SFM_EMBEDDING_MODEL=...`), their
LoCoMo dev recall. The report replaces the `models` section of --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import numpy as np
import run  # bench/run.py
from encoder import BATCH, measure  # bench/encoder.py
from vectors import CACHE  # bench/vectors.py

MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--locomo", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--cache", type=Path, default=CACHE / "models")
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    when = datetime.now(UTC)
    others = run.OtherLoad()
    others.start()
    from somafractalmemory.embedding.onnx import OnnxEmbedder

    questions = corpus.questions(300)
    texts = [m.content for m in corpus.memories(1000)]
    rows: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        clock = run.Clock()
        model = OnnxEmbedder(name, cache_dir=args.cache, batch_size=BATCH, int8_queries=True)
        model.embed(["warm-up"])
        model.embed_queries(["warm-up"])
        ready_s = clock.seconds
        full = measure(model, questions, texts)
        fast = [model.embed_queries([q]) for q in questions[:10]]  # warm
        single = []
        for q in questions:
            clock = run.Clock()
            fast.append(model.embed_queries([q]))
            single.append(clock.ms)
        closeness = (np.concatenate(fast[10:]) * model.embed(questions)).sum(axis=1)
        rows[name] = {
            "dim": model.dim,
            "ready_s": ready_s,
            "full": full["single"],
            "int8": run.Stats.of(single),
            "per_second": full["per_second"],
            "closeness": closeness,
        }
        print(name, {k: v for k, v in rows[name].items() if k != "closeness"}, flush=True)
    small, large = (rows[m] for m in MODELS)
    lines = [
        "## Embedding models: all-MiniLM-L6-v2 and all-mpnet-base-v2",
        "",
        f"`bench/models.py`, {when:%Y-%m-%d %H:%M} UTC, code {run.revision()}; other "
        f"processes during the run: {others.finish()[0]}. Both on onnxruntime (CPU); memories "
        "are embedded by the full export, queries by the int8 one unless `query_encoder: full`.",
        "",
        "| model | dim | bytes per vector | one query p50 / p99 ms, full | int8 | "
        "int8 vs full cosine, median / min | batch of 64: texts/s | export and first load s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['dim']} | {r['dim'] * 4} | {r['full'].p50:.1f} / {r['full'].p99:.1f} "
            f"| {r['int8'].p50:.1f} / {r['int8'].p99:.1f} | {np.median(r['closeness']):.4f} / "
            f"{r['closeness'].min():.4f} | {r['per_second']:.0f} | {r['ready_s']:.0f} |"
            for name, r in rows.items()
        ),
        "",
        f"mpnet / MiniLM in this run: one int8 query {large['int8'].p50 / small['int8'].p50:.1f}x "
        f"the time (p50), full {large['full'].p50 / small['full'].p50:.1f}x; batch throughput "
        f"{large['per_second'] / small['per_second']:.2f}x; vectors 2x the bytes.",
        "",
    ]
    named = (given.split("=", 1) for given in args.locomo)
    found = [(name, json.loads(Path(path).read_text())) for name, path in named]
    if found:
        lines += [
            "LoCoMo dev (`bench/locomo_eval.py --seed 0`, default search), by model:",
            "",
            "| model | mode | R@5 | R@10 | MRR | R@10 cat 1 | cat 2 | cat 3 | cat 4 | ms/query |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, result in found:
            for mode in ("hybrid", "vector"):
                r = result[mode]
                cats = " | ".join(f"{r['by_category'][c]['recall@10']:.3f}" for c in "1234")
                lines.append(
                    f"| {name} | {mode} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | "
                    f"{r['mrr']:.3f} | {cats} | {r['ms_per_query']:.1f} |"
                )
        lines.append("")
    body = "\n".join(lines)
    run.write_report(args.out, "models", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
