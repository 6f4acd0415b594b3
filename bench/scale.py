"""Search cost against collection size, on the embedded default: end-to-end HTTP search at
each size next to the bare engine call and an exact numpy search, and a plot.

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--queries 200] [--quick]
        [--out docs/benchmarks.md] [--plot docs/scale.png]

One temporary data directory (built-in defaults: SQLite, the local vector engine, LocMem
cache, ONNX query encoder) grows to each size in turn. Memories are synthetic (bench/corpus.py) and
loaded in bulk with the service's own row and index-record builders, with the vectors the
default encoder gives their texts (bench/vectors.py computes them once and caches them: a
million take some 80 minutes to encode here). A bulk-loaded memory's context vector is its
own vector (a store computes it from the memory with its neighbouring episodes).

At each size, in process: one dense search (`vector_index().search`, top 10, vector
embedded beforehand) per question, numpy brute force over the same vectors, and recall@10
of the first against the second. Then `sfm serve` starts on the data directory and answers
`POST /api/v2/memory/search` (default hybrid mode, top 10, query embedding included, each
question asked once) to an httpx client: p50, p95, p99 as the client sees them and the
server's own `latency_ms`. The report replaces the `scale` section of --out; the plot is a
PNG of the p50 and p99 of each series against the size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import corpus  # bench/corpus.py
import httpx
import run  # bench/run.py
from vectors import CorpusVectors  # bench/vectors.py

CHUNK = 5_000
NAMESPACES = 20
INGEST = 2_000  # memories batch-stored over HTTP at the largest size (beyond the loaded ones)
STACKS = ("embedded", "production")
"""`embedded`: the built-in defaults (SQLite, the local vector engine, LocMem cache).
`production`: a fresh PostgreSQL database, Redis and a Milvus standalone server (PyPI
`milvus`, started here unless --milvus-uri names one)."""


@dataclass(frozen=True)
class Point:
    """The measurements at one collection size."""

    stack: str
    size: int
    load_s: float
    http: run.Stats
    server: run.Stats
    engine: run.Stats
    numpy: run.Stats
    recall: float
    ingest_per_s: float = float("nan")
    """Memories a second batch-stored over HTTP (validation, encoding, SQL, index)."""
    encoder_per_s: float = float("nan")
    """The same texts through the encoder alone, in the bench process."""
    startup_s: float = float("nan")
    """From `sfm serve` started to ready (migrations, model, the index opened)."""
    rss_mib: float = float("nan")
    """Resident memory of the server's processes after the searches."""
    doctor_s: float = float("nan")
    """`sfm doctor` (SQL against the index, every memory) at the largest size."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> Point:
        stats = {k: run.Stats(**v) for k, v in data.items() if isinstance(v, dict)}
        return cls(**{**data, **stats})


def load(items: Sequence[corpus.Item], vectors: run.Matrix, offset: int) -> None:
    """Rows in bulk and their index records, for memories number offset.. of the corpus."""
    from somafractalmemory import backends
    from somafractalmemory.memories import identity, indexing
    from somafractalmemory.memories.models import Memory

    index = backends.vector_index()
    sql_lexical = indexing.sql_lexical()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    progress = run.Progress("load", offset + len(items))
    for at in range(0, len(items), CHUNK):
        rows = []
        for i, item in enumerate(items[at : at + CHUNK], start=offset + at):
            memory = Memory(
                id=identity.new_id("mem"),
                tenant_id="default",
                namespace=f"ns-{i % NAMESPACES}",
                type="episodic",
                metadata=item.metadata,
                importance=item.importance,
                created_at=start + timedelta(seconds=i),
                stored_at=now,
            )
            memory.set_content(item.content)
            if sql_lexical:  # a bulk-loaded memory's context is itself (as its vector)
                memory.context_tokens = memory.tokens
            rows.append(memory)
        Memory.objects.bulk_create(rows)
        part = vectors[at : at + len(rows)]
        index.upsert([indexing.vector_record(m, v) for m, v in zip(rows, part, strict=True)])
        progress.update(offset + at + len(rows))
    from django.db import connection

    if connection.vendor == "postgresql":  # as autovacuum would: plans need the new rows' stats
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE memories_memory")


def engine_and_numpy(
    matrix: run.Matrix, questions: run.Matrix, ids: Sequence[str]
) -> tuple[run.Stats, run.Stats, float]:
    """The bare dense search (the configured index, built) and numpy brute force per
    question, and recall@10 of the first."""
    from somafractalmemory import backends
    from somafractalmemory.conf import get_config

    index = backends.vector_index()
    if get_config().milvus_server:  # an index on a server: measure it built
        from ann import built  # bench/ann.py

        built(index)
    found, engine = run.time_index_only(questions, None)
    exact, brute = run.time_numpy(matrix, questions)
    return engine, brute, run.recall_at_k(found, exact, ids)


def server_processes(port: int) -> list[Path]:
    """/proc entries of the `sfm serve` processes on `port` (master first, then workers)."""
    found = []
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: (len(p.name), p.name)):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"serve" in argv and str(port).encode() in argv:
                    found.append(entry)
    return found


def server_pid(port: int) -> int:
    """The `sfm serve` master listening on `port` (py-spy follows its worker from there)."""
    for entry in server_processes(port):
        return int(entry.name)
    raise RuntimeError(f"no `sfm serve` process on port {port}")


@contextlib.contextmanager
def profiled(base: str, target: Path | None) -> Iterator[None]:
    """py-spy samples the server (200 Hz, without pausing it; idle threads left out) while
    the block runs, into collapsed stacks at `target` (one line per stack: frames, count)."""
    if target is None:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    pid = server_pid(int(base.rsplit(":", 1)[1]))
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(target),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attached before the first timed request
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        _, errors = spy.communicate(timeout=60)
        if not target.is_file():
            run.log(f"[profile] py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}")


def hot_frames(stacks: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, share of samples it is on the stack, share it is on top) from py-spy's
    collapsed stacks, the most inclusive first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in frames.split(";")
        ]
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + n
        own[names[-1]] = own.get(names[-1], 0) + n
    ranked = sorted(inclusive, key=lambda k: -inclusive[k])[:top]
    return [(k, inclusive[k] / total, own.get(k, 0) / total) for k in ranked] if total else []


def server_rss_mib(port: int) -> float:
    """Resident memory of every `sfm serve` process on `port` (master and workers)."""
    total = 0
    for entry in server_processes(port):
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0])  # kB
    return total / 1024


def over_http(
    env: dict[str, str], log_path: Path, asked: Sequence[Sequence[str]], profile: Path | None
) -> tuple[run.Stats, run.Stats, float, float]:
    """Warm-up, then the timed series; with `profile`, a third series of other questions
    under py-spy (untimed: sampling costs the server a little). Also the seconds the server
    took to be ready, and its resident memory after the searches."""
    warm_up, timed, sampled = asked
    started = run.Clock()
    with (
        run.server(env, log_path) as base,
        httpx.Client(base_url=base, timeout=120.0, trust_env=False) as client,
    ):
        startup = started.seconds
        http, server = run.http_search(client, timed, warm_up)
        rss = server_rss_mib(int(base.rsplit(":", 1)[1]))
        if profile is not None:
            with profiled(base, profile):
                run.http_search(client, sampled, ())
        return http, server, startup, rss


def plot(points: Sequence[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=120)
    series = (
        ("HTTP search, hybrid (client)", "http", "tab:blue"),
        ("server latency_ms", "server", "tab:cyan"),
        ("engine: one dense search", "engine", "tab:orange"),
        ("numpy brute force", "numpy", "tab:green"),
    )
    stacks = list(dict.fromkeys(p.stack for p in points))
    marks = {"embedded": ("o-", "x--"), "production": ("s-.", "+:")}
    for stack in stacks:
        mine = [p for p in points if p.stack == stack]
        sizes = [p.size for p in mine]
        p50, p99 = marks.get(stack, ("o-", "x--"))
        for label, name, colour in series:
            if stack != stacks[0] and name == "numpy":
                continue  # the same vectors, the same brute force
            stats = [getattr(p, name) for p in mine]
            axes.plot(
                sizes, [s.p50 for s in stats], p50, color=colour, label=f"{stack}: {label} p50"
            )
            axes.plot(
                sizes,
                [s.p99 for s in stats],
                p99,
                color=colour,
                alpha=0.6,
                label=f"{stack}: {label} p99",
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("memories in the collection")
    axes.set_ylabel("latency, ms")
    axes.set_title(f"Search latency against collection size ({', '.join(stacks)}; 2 cores)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


# The frames of a search worth a line in the report: the request, its parts, the engine.
PROFILE_FRAMES = (
    "ThreadWorker.handle_request (gthread.py)",
    "WSGIHandler.__call__ (wsgi.py)",
    "search (api.py)",
    "recall (recall.py)",
    "embed_query (cache.py)",
    "Session.run (onnxruntime_inference_collection.py)",
    "MilvusIndex._call (milvus.py)",
    "LocalIndex._nearest (local.py)",
    "LocalIndex._allowed (local.py)",
    "LocalIndex.search_lexical (local.py)",
    "Postings.top (postings.py)",
    "_sql_lexical (recall.py)",
    "_score (recall.py)",
    "SQLCompiler.execute_sql (compiler.py)",
    "reinforce (recall.py)",
    "Response.write (wsgi.py)",
    "keyed_tokens (lexical.py)",
    "open_sealed (crypto.py)",
    "Schema.dump (schema.py)",
)


def render_profile(points: Sequence[Point], args: argparse.Namespace) -> list[str]:
    if not args.profiles:
        return []
    found = [(p.size, args.profiles / f"search-{p.size // 1000}k.txt") for p in points]
    found = [(size, path) for size, path in found if path.is_file()]
    if not found:
        return []
    shares = [
        {name: (inclusive, own) for name, inclusive, own in hot_frames(path, 10_000)}
        for _, path in found
    ]
    rows = [
        f"| `{name}` | "
        + " | ".join(f"{s[name][0]:.1%} / {s[name][1]:.1%}" if name in s else "-" for s in shares)
        + " |"
        for name in PROFILE_FRAMES
        if any(name in s for s in shares)
    ]
    return [
        f"Where the server's CPU samples fall during a third HTTP series at each size "
        f"({args.queries} other questions under py-spy, 200 Hz, idle threads left out; all "
        f"stacks in `{os.path.relpath(args.profiles, args.out.parent)}/search-<size>k.txt`): "
        "share of samples with the frame on the stack / on top of it.",
        "",
        "| frame | " + " | ".join(f"{size:,}" for size, _ in found) + " |",
        "|---|" + "---:|" * len(found),
        *rows,
    ]


def render(points: Sequence[Point], args: argparse.Namespace, info: run.RunInfo) -> str:
    box = run.machine()
    lines = [
        "## Search against collection size (" + ", ".join(args.stacks) + ")",
        "",
        f"`bench/scale.py --stacks {','.join(args.stacks)}`, {info.when:%Y-%m-%d %H:%M} UTC, "
        f"code {info.code}; {box['cpu']}, "
        f"{box['cores']} cores, {box['ram']}; other processes during the run: {info.others}; "
        f"{args.queries} questions per series, each asked once, after {run.WARM_UP} untimed "
        f"ones. Total {info.seconds / 60:.1f} min."
        + "".join(
            f" `sfm doctor` at {p.size:,} ({p.stack}): {p.doctor_s:.1f} s."
            for p in points
            if p.doctor_s == p.doctor_s
        ),
        "",
        *run.render_warning(info),
        f"![search latency against size]({args.plot.name})",
        "",
        "| stack | memories | HTTP search p50 / p95 / p99 ms | server `latency_ms` p50 / p99 | "
        "engine: one dense search p50 / p99 | numpy brute force p50 / p99 | engine / "
        "numpy (p50) | recall@10 | load s | server start s | server RSS MiB |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.stack} | {p.size:,} | {p.http.p50:.1f} / {p.http.p95:.1f} / "
            f"{p.http.p99:.1f} | "
            f"{p.server.p50:.1f} / {p.server.p99:.1f} | {p.engine.p50:.2f} / "
            f"{p.engine.p99:.2f} | {p.numpy.p50:.2f} / {p.numpy.p99:.2f} | "
            f"{p.engine.p50 / p.numpy.p50:.2f}x | {p.recall:.3f} | {p.load_s:.0f} | "
            f"{p.startup_s:.1f} | {p.rss_mib:.0f} |"
        )
    ingested = [p for p in points if p.ingest_per_s == p.ingest_per_s]  # not NaN
    lines += [
        "",
        f"Ingest at the largest size: {INGEST:,} new memories batch-stored over HTTP "
        "(`POST /api/v2/memory/batch`, 1,000 a request: validation, encoding, sealing, SQL, "
        "index) against the encoder alone on the same texts (`embedder().embed`, the bench "
        "process, the server stopped):",
        "",
        "| stack | memories | batch store /s | encoder alone /s | store / encoder |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {p.stack} | {p.size:,} | {p.ingest_per_s:.0f} | {p.encoder_per_s:.0f} | "
            f"{p.ingest_per_s / p.encoder_per_s:.2f} |"
            for p in ingested
        ),
        "",
        "Stacks: `embedded` is the built-in defaults (SQLite, the local vector engine: faiss "
        "HNSW in process, its lexical legs BM25 in process too; LocMem cache); `production` "
        "a fresh "
        "PostgreSQL 15 database, Redis 7 and a Milvus standalone "
        f"server (PyPI `milvus` 2.3.5; `proxy.timeTickInterval` {args.milvus_tick_ms} ms, as "
        "docs/deployment.md advises: a Strong search waits for a time tick, 200 ms at "
        "Milvus's default), HNSW, the lexical legs from PostgreSQL BM25 (2.3.5 has no BM25). "
        "The engine and recall rows on the server are measured after the index is built.",
    ]
    embedded = [p for p in points if p.stack == "embedded"]
    lines += ["", *render_profile(embedded, args)] if embedded else []
    lines += [
        "",
        "HTTP search: `POST /api/v2/memory/search` with the default hybrid mode (dense, "
        "context-vector, BM25 and context-BM25 legs of 40 candidates each, fused and scored), "
        "top 10, the query embedded by the ONNX encoder (no cache hit: each question is new). "
        "Engine: `vector_index().search` with a vector embedded beforehand, top 10, no "
        "filter. Recall@10: the engine's top 10 against numpy's exact top 10.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated, ascending")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 10,000, 50 queries")
    parser.add_argument(
        "--stacks", default="embedded", help=f"comma-separated, of {', '.join(STACKS)}"
    )
    parser.add_argument("--milvus-uri", help="production: a running Milvus server (default: one)")
    parser.add_argument(
        "--milvus-tick-ms",
        type=int,
        default=20,
        help="production: the started server's proxy.timeTickInterval (Milvus's default: 200)",
    )
    parser.add_argument("--section", default="scale")
    parser.add_argument("--out", type=Path, default=run.ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=run.ROOT / "docs" / "scale.png")
    parser.add_argument(
        "--profiles",
        type=Path,
        default=run.ROOT / "docs" / "profiles",
        help="py-spy the server at the largest size, into this folder ('': not at all)",
    )
    parser.add_argument("--child", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.profiles = args.profiles if str(args.profiles) not in ("", ".") else None
    if args.quick:
        args.sizes, args.queries = "2000,10000", 50
        args.section = "scale-quick" if args.section == "scale" else args.section
        args.plot = args.plot.with_name("scale-quick.png")
        args.profiles = args.profiles / "quick" if args.profiles else None
    args.stacks = [x for x in args.stacks.split(",") if x]
    unknown = set(args.stacks) - set(STACKS)
    if unknown:
        parser.error(f"unknown stacks {sorted(unknown)}: choose from {list(STACKS)}")
    return args


@contextlib.contextmanager
def stack_settings(stack: str, milvus_uri: str | None, tick_ms: int) -> Iterator[dict[str, str]]:
    """The SFM_* settings of `stack` (its services started, and removed afterwards)."""
    if stack == "embedded":
        yield {}
        return
    sys.path.insert(0, str(run.ROOT))
    from tests.milvus_server import create_database, drop_database, standalone

    with contextlib.ExitStack() as stack_:
        database = stack_.enter_context(run.postgres_database())
        run.flush_redis()
        if milvus_uri is None:
            tick = {"proxy.timeTickInterval": str(tick_ms)}
            milvus_uri = stack_.enter_context(standalone(extra=tick)).uri
        db = create_database(milvus_uri, "scale")
        stack_.callback(drop_database, milvus_uri, db)
        yield {
            "SFM_DATABASE_URL": database,
            "SFM_REDIS_URL": run.REDIS_URL,
            "SFM_MILVUS_URI": milvus_uri,
            "SFM_MILVUS_DB": db,
        }


def timed_doctor(env: dict[str, str]) -> float:
    """Seconds of `sfm doctor` on the data directory (what it found goes to the log)."""
    clock = run.Clock()
    done = subprocess.run(
        [run.sfm_command(), "doctor"], env=env, capture_output=True, text=True, check=False
    )
    run.log(f"[doctor] exit {done.returncode}: {(done.stdout or done.stderr)[-300:].strip()}")
    return clock.seconds


def ingest(
    env: dict[str, str], log_path: Path, items: Sequence[corpus.Item]
) -> tuple[float, float]:
    """Memories a second batch-stored over HTTP, and the encoder alone on the same texts."""
    with (
        run.server(env, log_path) as base,
        httpx.Client(base_url=base, timeout=600.0, trust_env=False) as client,
    ):
        stored, _ = run.http_batches(client, items)
    _, encoded = run.encode([item.content for item in items])
    return stored.per_second, encoded.per_second


def measure(stack: str, args: argparse.Namespace) -> list[Point]:
    """Every size on one stack, in this process (Django is set up once per process)."""
    sizes = sorted(int(s) for s in args.sizes.split(","))
    run.READY_TIMEOUT = 900.0  # a server opening a million memories loads them all first
    items = corpus.memories(sizes[-1] + INGEST)
    fresh, items = items[sizes[-1] :], items[: sizes[-1]]
    run.log(f"[setup] vectors of {len(items):,} memories (cached after the first run)")
    matrix = CorpusVectors().of(items)
    questions = corpus.questions(run.WARM_UP + args.queries * len(sizes) * 3)
    points: list[Point] = []
    with contextlib.ExitStack() as stack_:
        made = tempfile.TemporaryDirectory(prefix="sfm-scale-", ignore_cleanup_errors=True)
        tmp = Path(stack_.enter_context(made))
        config = tmp / "defaults.yaml"
        config.write_text("# bench/scale.py: built-in defaults only\n")
        extra = stack_.enter_context(stack_settings(stack, args.milvus_uri, args.milvus_tick_ms))
        env = run.settings_env(tmp / "data", config, extra)
        run.use_env(env)
        run.start_django()
        from django.db import connections

        from somafractalmemory import backends
        from somafractalmemory.memories.models import Memory

        loaded = 0
        for number, size in enumerate(sizes):
            run.open_backends()
            load_clock = run.Clock()
            load(items[loaded:size], matrix[loaded:size], loaded)
            load_s = load_clock.seconds
            loaded = size
            ids = [
                m
                for m, _ in sorted(
                    Memory.objects.values_list("id", "created_at"), key=lambda row: row[1]
                )
            ]
            first = run.WARM_UP + 3 * number * args.queries
            asked = questions[first : first + args.queries]
            vectors = backends.embedder().embed(asked)
            run.log(f"[{stack} {size:,}] engine and numpy, {len(asked)} questions")
            measured = engine_and_numpy(matrix[:size], vectors, ids)
            engine, brute, recall = measured[:3]
            backends.reset()  # one process owns the embedded index: the server's turn
            connections.close_all()
            later = [
                questions[first + k * args.queries : first + (k + 1) * args.queries] for k in (1, 2)
            ]
            run.log(f"[{stack} {size:,}] HTTP search, {args.queries} questions")
            profile = (
                args.profiles / f"search-{size // 1000}k.txt"
                if args.profiles and stack == "embedded"
                else None
            )
            http, server, startup, rss = over_http(
                env, tmp / f"server-{size}.log", [questions[: run.WARM_UP], *later], profile
            )
            stored = encoded = doctor = float("nan")
            if size == sizes[-1]:
                doctor = timed_doctor(env)
                run.log(f"[{stack} {size:,}] sfm doctor: {doctor:.1f} s")
            if size == sizes[-1]:  # last: the new memories are in no numpy matrix
                run.log(f"[{stack} {size:,}] HTTP batch store of {INGEST:,} new memories")
                stored, encoded = ingest(env, tmp / f"ingest-{size}.log", fresh)
            points.append(
                Point(
                    stack,
                    size,
                    load_s,
                    http,
                    server,
                    *measured,
                    stored,
                    encoded,
                    startup,
                    rss,
                    doctor,
                )
            )
            run.log(
                f"[{stack} {size:,}] HTTP p50 {http.p50:.1f} ms, engine p50 {engine.p50:.2f} "
                f"ms, numpy p50 {brute.p50:.2f} ms, recall@10 {recall:.3f}, ingest "
                f"{stored:.0f}/s (encoder {encoded:.0f}/s)"
            )
    return points


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        points = measure(args.child, args)
        args.json.write_text(json.dumps([p.to_json() for p in points]))
        return 0
    when, code = datetime.now(UTC), run.revision()
    others = run.OtherLoad()
    others.start()
    clock = run.Clock()
    points = []
    with tempfile.TemporaryDirectory(prefix="sfm-scale-") as tmp:
        for stack in args.stacks:  # a process each: Django's database is set once
            out = Path(tmp) / f"{stack}.json"
            command = [sys.executable, __file__, *(argv or sys.argv[1:]), "--child", stack]
            subprocess.run([*command, "--json", str(out)], check=True)
            points += [Point.of_json(p) for p in json.loads(out.read_text())]
    info = run.RunInfo(when, code, "", *others.finish(), clock.seconds)
    plot(points, args.plot)
    body = render(points, args, info)
    run.write_report(args.out, args.section, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
