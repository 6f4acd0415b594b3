"""Summary quality on LoCoMo: the service's summarizer against the sessions' human summaries.

LoCoMo ships `session_summary`, written by people for every session. For each session this
scores, by ROUGE-1/2/L F1 (`rouge-score`, Porter stemming), what the service's summarizer
writes for the session's turns (the text a parent consolidating that session holds), beside
two baselines computed in the same run: Lead-3 (the session's first three sentences) and
TextRank (sentences ranked by PageRank over their word overlap, up to as many words as the
summarizer wrote, in their original order). Summaries are never indexed as memories.

    python bench/summaries.py --data FILE [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from locomo_eval import turn_text
from run import write_report

from somafractalmemory.conf import get_config
from somafractalmemory.retrieval.lexical import analyze
from somafractalmemory.summaries.extractive import ExtractiveSummarizer, sentences

METRICS = ("rouge1", "rouge2", "rougeL")


def sessions(path: Path) -> list[tuple[str, list[str], str]]:
    """(session name, its turns' texts, the human summary) for every session."""
    out = []
    for sample in json.loads(path.read_text()):
        conv, summaries = sample["conversation"], sample.get("session_summary", {})
        for key in sorted(
            conv, key=lambda k: int(m.group(1)) if (m := re.fullmatch(r"session_(\d+)", k)) else 0
        ):
            if not re.fullmatch(r"session_\d+", key) or f"{key}_summary" not in summaries:
                continue
            texts = [turn_text(t) for t in conv[key]]
            out.append((f"{sample['sample_id']}/{key}", texts, summaries[f"{key}_summary"]))
    return out


def lead(texts: Sequence[str], n: int = 3) -> str:
    return " ".join([s for t in texts for s in sentences(t)][:n])


def textrank(texts: Sequence[str], words: int, *, damping: float = 0.85, rounds: int = 50) -> str:
    """The most central sentences (Mihalcea and Tarau 2004: overlap over log lengths) up to
    `words` words, in their original order."""
    pieces = [s for t in texts for s in sentences(t)]
    terms = [set(analyze(s)) for s in pieces]
    size = len(pieces)
    weights = [[0.0] * size for _ in range(size)]
    for i in range(size):
        for j in range(i + 1, size):
            shared = len(terms[i] & terms[j])
            if shared and len(terms[i]) > 1 and len(terms[j]) > 1:
                w = shared / (math.log(len(terms[i])) + math.log(len(terms[j])))
                weights[i][j] = weights[j][i] = w
    totals = [sum(row) for row in weights]
    rank = [1.0] * size
    for _ in range(rounds):
        rank = [
            (1 - damping)
            + damping * sum(weights[j][i] / totals[j] * rank[j] for j in range(size) if totals[j])
            for i in range(size)
        ]
    best: list[int] = []
    for i in sorted(range(size), key=lambda i: (-rank[i], i)):
        if sum(len(pieces[j].split()) for j in best) >= words:
            break
        best.append(i)
    return " ".join(pieces[i] for i in sorted(best))


def evaluate(data: Path) -> dict[str, dict[str, float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    summarizer = ExtractiveSummarizer()
    limit = get_config().max_content_bytes
    scores: dict[str, dict[str, list[float]]] = {}
    lengths: dict[str, list[int]] = {}

    def add(method: str, text: str, reference: str) -> None:
        got = scorer.score(reference, text)
        for metric in METRICS:
            scores.setdefault(method, {}).setdefault(metric, []).append(got[metric].fmeasure)
        lengths.setdefault(method, []).append(len(text.split()))

    found = sessions(data)
    for number, (_, texts, reference) in enumerate(found, 1):
        made = summarizer.summarize(texts, max_bytes=limit)
        add("service (extractive)", made, reference)
        add("Lead-3", lead(texts), reference)
        add("TextRank (as many words)", textrank(texts, len(made.split())), reference)
        if number % 25 == 0:
            print(f"[{number}/{len(found)}] sessions scored", file=sys.stderr)
    lengths["reference"] = [len(r.split()) for _, _, r in found]
    out = {
        method: {m: round(statistics.fmean(v), 4) for m, v in by_metric.items()}
        | {"words": round(statistics.fmean(lengths[method]), 1), "sessions": len(found)}
        for method, by_metric in scores.items()
    }
    out["reference"] = {"words": round(statistics.fmean(lengths["reference"]), 1)}
    return out


def table(results: dict[str, dict[str, float]], data: Path, code: str) -> str:
    n = next(iter(results.values()))["sessions"]
    lines = [
        "## Summary quality: LoCoMo session summaries",
        "",
        f"`make bench-summaries` (`bench/summaries.py --data {data.name}`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, code `{code}`: {n:.0f} "
        "sessions, each summarized from its turns and scored against the human "
        f"`session_summary` (mean {results['reference']['words']:.0f} words), ROUGE F1 with "
        "Porter stemming.",
        "",
        "| method | ROUGE-1 | ROUGE-2 | ROUGE-L | words |",
        "|---|---|---|---|---|",
    ]
    for method, r in results.items():
        if method != "reference":
            lines.append(
                f"| {method} | {r['rouge1']:.3f} | {r['rouge2']:.3f} | {r['rougeL']:.3f} | "
                f"{r['words']:.0f} |"
            )
    lines += [
        "",
        "The service's text is what a parent consolidating the whole session would hold "
        "(`summaries/extractive.py`, the default `summarizer`); consolidation may split a "
        "session into several parents by meaning. Lead-3 and TextRank are computed in the "
        "same run; TextRank writes as many words as the service did.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a LoCoMo-format JSON file")
    parser.add_argument("--out", type=Path, help="update this markdown file's section")
    args = parser.parse_args(argv)
    from locomo_eval import code_version

    results = evaluate(args.data)
    section = table(results, args.data, code_version())
    print(section)
    if args.out:
        write_report(args.out, "summaries", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
