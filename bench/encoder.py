"""The query encoder on its two runtimes, in one run: the bundled model on torch
(sentence-transformers) and the same weights exported to ONNX on onnxruntime.

    .venv/bin/python bench/encoder.py [--locomo-torch F.json --locomo-onnx F.json]
        [--out docs/benchmarks.md]

Single-query latency (300 synthetic questions, one at a time, as a search embeds them),
batch throughput (2,000 synthetic memories in batches of 64, as stores embed them), and how
far apart the two runtimes' vectors are. With the two JSON files that `bench/locomo_eval.py
--json` writes (run once with SFM_EMBEDDING_RUNTIME=torch and once with onnx), the LoCoMo
recall of both. The report replaces the `encoder` section of --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import numpy as np
import run  # bench/run.py

BATCH = 64


def measure(embedder: Any, questions: Sequence[str], texts: Sequence[str]) -> dict[str, Any]:
    for q in questions[:10]:
        embedder.embed([q])
    single = []
    for q in questions:
        clock = run.Clock()
        embedder.embed([q])
        single.append(clock.ms)
    clock = run.Clock()
    vectors = np.concatenate(
        [embedder.embed(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    )
    return {
        "single": run.Stats.of(single),
        "per_second": len(texts) / clock.seconds,
        "vectors": vectors,
    }


def locomo(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    found: dict[str, Any] = json.loads(path.read_text())
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--locomo-torch", type=Path)
    parser.add_argument("--locomo-onnx", type=Path)
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    when = datetime.now(UTC)
    others = run.OtherLoad()
    others.start()
    from somafractalmemory.embedding.local import LocalEmbedder
    from somafractalmemory.embedding.onnx import OnnxEmbedder

    questions = corpus.questions(300)
    texts = [m.content for m in corpus.memories(2000)]
    with tempfile.TemporaryDirectory(prefix="sfm-encoder-") as tmp:
        clock = run.Clock()
        fast = OnnxEmbedder(cache_dir=Path(tmp))
        fast.embed(["warm-up"])
        export_s = clock.seconds
        results = {
            "torch": measure(LocalEmbedder(cache_dir=Path(tmp)), questions, texts),
            "onnx": measure(fast, questions, texts),
        }
    cosines = (results["torch"]["vectors"] * results["onnx"]["vectors"]).sum(axis=1)
    torch_, onnx_ = results["torch"], results["onnx"]
    lines = [
        "## Query encoder: torch and ONNX runtimes (all-MiniLM-L6-v2, same weights)",
        "",
        f"`bench/encoder.py`, {when:%Y-%m-%d %H:%M} UTC, code {run.revision()}; other "
        f"processes during the run: {others.finish()[0]}. Export to ONNX and first load: "
        f"{export_s:.1f} s (once per data directory).",
        "",
        "| runtime | one query p50 ms | p95 ms | p99 ms | batch of 64: texts/s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['single'].p50:.2f} | {r['single'].p95:.2f} | "
            f"{r['single'].p99:.2f} | {r['per_second']:.0f} |"
            for name, r in results.items()
        ),
        "",
        f"ONNX / torch: one query {onnx_['single'].p50 / torch_['single'].p50:.3f} of the time "
        f"(p50), batches {onnx_['per_second'] / torch_['per_second']:.2f}x the throughput. "
        f"Cosine between the two runtimes' vectors over 2,000 texts: min {cosines.min():.7f}, "
        f"mean {cosines.mean():.7f}.",
        "",
    ]
    recall = {
        name: locomo(path)
        for name, path in (("torch", args.locomo_torch), ("onnx", args.locomo_onnx))
    }
    if all(recall.values()):
        lines += [
            "LoCoMo dev (`bench/locomo_eval.py`, default search) with each runtime:",
            "",
            "| runtime | recall@10 | MRR |",
            "|---|---:|---:|",
        ]
        for name, found in recall.items():
            assert found is not None
            hybrid = found["hybrid"]
            lines.append(f"| {name} | {hybrid['recall@10']:.4f} | {hybrid['mrr']:.4f} |")
        delta = (
            recall["onnx"]["hybrid"]["recall@10"]  # type: ignore[index]
            - recall["torch"]["hybrid"]["recall@10"]  # type: ignore[index]
        )
        lines += ["", f"Recall@10 ONNX minus torch: {delta:+.4f} (allowed: -0.01).", ""]
    body = "\n".join(lines)
    run.write_report(args.out, "encoder", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
