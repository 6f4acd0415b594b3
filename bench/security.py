"""Benchmark of what tenancy costs per request: sealing and opening memories (AES-256-GCM),
the policy decision (Rego in process), and key authentication, next to the store and search
latency they are part of.

    .venv/bin/python bench/security.py [--n 2000] [--out docs/benchmarks.md]

Embedded default settings in a fresh temporary data directory; N synthetic memories stored
in batches, then the timings below; the report replaces the `security` section of --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import run  # bench/run.py

REPEAT = 2000


def per_call_us(fn: Callable[[], Any], repeat: int = REPEAT) -> run.Stats:
    times = []
    for _ in range(repeat):
        clock = run.Clock()
        fn()
        times.append(clock.ms * 1000)
    return run.Stats.of(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    when = datetime.now(UTC)
    others = run.OtherLoad()
    others.start()
    items = corpus.memories(args.n + 200)
    questions = corpus.questions(200)
    with tempfile.TemporaryDirectory(prefix="sfm-security-", ignore_cleanup_errors=True) as tmp:
        config = Path(tmp) / "defaults.yaml"
        config.write_text("# bench/security.py: built-in defaults only\n")
        run.use_env(run.settings_env(Path(tmp) / "data", config))
        run.start_django()
        run.open_backends()
        from django.db import connection

        from somafractalmemory import crypto, policy
        from somafractalmemory.memories import services, tenancy
        from somafractalmemory.memories.models import Memory, data_key

        memories = [run.new_memory(i) for i in items]
        for start in range(0, args.n, 1000):
            services.remember_many(memories[start : min(start + 1000, args.n)])
        key = data_key("default")
        sample = items[0]
        text, meta = sample.content, json.dumps(sample.metadata)
        sealed = crypto.seal(key, "default", "content", text)
        rows: dict[str, run.Stats] = {
            "seal content + metadata (one memory)": per_call_us(
                lambda: (
                    crypto.seal(key, "default", "content", text),
                    crypto.seal(key, "default", "metadata", meta),
                )
            ),
            "open content (one memory)": per_call_us(
                lambda: crypto.open_sealed(key, "content", sealed)
            ),
        }
        facts = {
            "tenant": "default",
            "key_id": "k",
            "scopes": ["read", "write"],
            "allowed_namespaces": [],
            "action": "memory.read",
            "namespace": "ns",
            "resource": "",
        }
        rows["policy decision (Rego in process)"] = per_call_us(lambda: policy.decide(facts))
        tenancy.create_tenant("bench")
        secret = tenancy.create_key("bench", ["read"]).secret
        rows["authenticate a key (digest lookup)"] = per_call_us(
            lambda: tenancy.authenticate(f"Bearer {secret}", "127.0.0.1"), 500
        )
        ids = list(Memory.objects.values_list("id", flat=True)[:10])
        rows["read 10 hits through the model (opens content + metadata)"] = per_call_us(
            lambda: Memory.objects.in_bulk(ids), 500
        )

        def raw() -> Any:
            with connection.cursor() as cursor:
                marks = ",".join(["%s"] * len(ids))
                cursor.execute(f"SELECT * FROM memories_memory WHERE id IN ({marks})", ids)
                return cursor.fetchall()

        rows["read the same 10 rows as raw SQL (no decryption)"] = per_call_us(raw, 500)
        for m in memories[args.n : args.n + 5]:  # warm-up
            services.store_many([m], report_near=True)
        store_ms = []
        for m in memories[args.n + 5 : args.n + 105]:
            clock = run.Clock()
            services.store_many([m], report_near=True)
            store_ms.append(clock.ms)
        search_ms = [services.recall(q).latency_ms for q in questions[:100]]
    store, search = run.Stats.of(store_ms), run.Stats.of(search_ms)
    seal, opened = rows["seal content + metadata (one memory)"], rows["open content (one memory)"]
    policy_us = rows["policy decision (Rego in process)"].p50
    auth_us = rows["authenticate a key (digest lookup)"].p50
    read_extra = (
        rows["read 10 hits through the model (opens content + metadata)"].p50
        - rows["read the same 10 rows as raw SQL (no decryption)"].p50
    )
    lines = [
        f"## Tenancy costs: encryption, policy, authentication (embedded, {args.n:,} memories)",
        "",
        f"`bench/security.py`, {when:%Y-%m-%d %H:%M} UTC, code {run.revision()}; other "
        f"processes during the run: {others.finish()[0]}. Per-call times in microseconds, "
        "over 2,000 calls (500 for the database ones).",
        "",
        "| what | p50 µs | p95 µs | mean µs |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {v.p50:.1f} | {v.p95:.1f} | {v.mean:.1f} |" for k, v in rows.items()),
        "",
        "| request, in process | p50 ms | p95 ms |",
        "|---|---:|---:|",
        f"| store one memory (`store_many`, as `POST /memory/store`) | {store.p50:.2f} | "
        f"{store.p95:.2f} |",
        f"| search (`recall`, hybrid, top 10) | {search.p50:.2f} | {search.p95:.2f} |",
        "",
        f"Share of a store spent sealing: {seal.p50 / 1000 / store.p50:.2%}; of a search spent "
        "opening its 10 hits (model read minus raw read, which also counts the ORM's own "
        f"work: an upper bound): {read_extra / 1000 / search.p50:.2%}"
        f"; the policy decision and key authentication add {policy_us:.0f} µs and "
        f"{auth_us:.0f} µs per request ({(policy_us + auth_us) / 1000 / search.p50:.2%} of a "
        f"search). Opening one content alone: {opened.p50:.1f} µs.",
        "",
    ]
    body = "\n".join(lines)
    run.write_report(args.out, "security", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
