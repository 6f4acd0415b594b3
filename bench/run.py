"""Benchmark of the service: the embedded default (SQLite + Milvus Lite + all-MiniLM-L6-v2 on
the CPU) or PostgreSQL + Redis (with Milvus Lite).

    .venv/bin/python bench/run.py [--backend embedded|postgres+redis] [--n N] [--queries Q]
        [--load-seconds S] [--no-http] [--out docs/benchmarks.md]

Stores N synthetic agent memories through the service layer (one at a time, then in batches),
measures search through the service layer, the bare index and an exact numpy reference, then
does the same over HTTP against a real `sfm serve` process. Every run starts from empty,
temporary data directories with the built-in settings (no config.yaml, no SFM_* overrides
except, for postgres+redis, SFM_DATABASE_URL to a fresh database and SFM_REDIS_URL). Over HTTP
it also measures throughput with 1, 4 and 16 concurrent clients. Progress goes to stderr; the
markdown report goes to stdout and replaces this backend's section of --out (other sections
and the LoCoMo block stay as they are).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import corpus  # bench/corpus.py
import httpx
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from somafractalmemory.memories.services import NewMemory

ROOT = Path(__file__).resolve().parent.parent
TOP_K = 10
BATCH = 1000  # the service's max_batch
ENCODER_BATCH = 64  # the service's embedding_batch_size
WARM_UP = 5  # untimed calls before each latency series
FILTER: dict[str, Any] = {"category": "travel"}
READY_TIMEOUT = 180.0
PROGRESS_EVERY = 1000
CONTENDED = 0.10  # share of the machine other processes may use before the report warns
BACKENDS = ("embedded", "postgres+redis")
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/14"
CONCURRENCY = (1, 4, 16)
SEARCH_SHARE = 0.8  # of the requests under load; the rest are single stores
LOAD_QUESTIONS = 3000

Matrix = npt.NDArray[np.float32]
Ranks = npt.NDArray[np.intp]


# -- measurements ------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Latency percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float
    mean: float
    count: int

    @classmethod
    def of(cls, ms: Sequence[float]) -> Stats:
        if not ms:
            nan = float("nan")
            return cls(nan, nan, nan, nan, 0)
        p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
        return cls(p50, p95, p99, float(np.mean(ms)), len(ms))


@dataclass(frozen=True)
class Rate:
    items: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


class Clock:
    """Milliseconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


class Progress:
    """A stderr line every PROGRESS_EVERY items, with the rate so far."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.clock, self.shown = label, total, Clock(), 0

    def update(self, done: int) -> None:
        if done // PROGRESS_EVERY > self.shown // PROGRESS_EVERY or done == self.total:
            self.shown = done
            rate = done / self.clock.seconds if self.clock.seconds > 0 else 0.0
            log(f"[{self.label}] {done:,}/{self.total:,} ({rate:,.0f}/s)")


class OtherLoad(threading.Thread):
    """CPU time that processes outside this run use while it runs (the machine may be shared).

    Samples /proc every second; a process counts as ours once seen below this one (the
    server and the Milvus Lite processes). Short-lived processes between samples are missed.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._stop_event = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._ours: set[int] = {os.getpid()}
        self._start: dict[tuple[int, int], float] = {}  # (pid, start tick) -> CPU seconds
        self._last: dict[tuple[int, int], float] = {}
        self._clock = Clock()
        self._first = True

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            key = (pid, int(fields[19]))
            cpu = (int(fields[11]) + int(fields[12])) / self._tick
            self._start.setdefault(key, cpu if self._first else 0.0)
            self._last[key] = cpu
        self._first = False
        grew = True
        while grew:
            found = {pid for pid, parent in parents.items() if parent in self._ours}
            grew = not found <= self._ours
            self._ours |= found

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._sample()
            self._stop_event.wait(1.0)

    def finish(self) -> tuple[str, float]:
        """A description of the other processes' CPU use, and their share of the machine."""
        self._stop_event.set()
        self.join()
        self._sample()
        seconds = sum(
            self._last[key] - self._start[key] for key in self._last if key[0] not in self._ours
        )
        share = seconds / (self._clock.seconds * (os.cpu_count() or 1))
        return f"{seconds:,.0f} CPU-seconds ({share:.0%} of the machine over the run)", share


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- queries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySets:
    """Distinct questions per series, so a query-embedding cache serves no series from another."""

    warm_up: list[str]
    plain: list[str]
    vector: list[str]
    filtered: list[str]
    http: list[str]
    load: list[str]

    @classmethod
    def make(cls, count: int) -> QuerySets:
        q = corpus.questions(WARM_UP + 4 * count + LOAD_QUESTIONS)
        series = [q[WARM_UP + i * count : WARM_UP + (i + 1) * count] for i in range(4)]
        plain, vector, filtered, http = series
        return cls(q[:WARM_UP], plain, vector, filtered, http, q[WARM_UP + 4 * count :])


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    when: datetime
    code: str
    load: str
    others: str
    others_share: float
    seconds: float


@dataclass(frozen=True)
class Startup:
    migrate_s: float
    model_s: float
    index_s: float


@dataclass(frozen=True)
class StoreResults:
    encoder: Rate
    single: Rate
    single_latency: Stats
    batch: Rate
    batch_latency: Stats


@dataclass(frozen=True)
class RecallStats:
    """One series of services.recall calls: the three latencies of each `Recall`."""

    total: Stats
    embedding: Stats
    index: Stats


@dataclass(frozen=True)
class SearchResults:
    pool: int
    hybrid: RecallStats
    repeat: RecallStats
    vector: RecallStats
    filtered: RecallStats
    index_only: Stats
    numpy: Stats
    recall: float
    filtered_share: float
    filtered_index_only: Stats
    filtered_numpy: Stats
    filtered_recall: float


@dataclass(frozen=True)
class HttpResults:
    batch: Rate
    batch_latency: Stats
    single: Rate
    single_latency: Stats
    search: Stats
    search_server: Stats
    startup_s: float
    load: list[LoadResult]


@dataclass(frozen=True)
class LoadResult:
    """Mixed search/store traffic from `clients` threads for `seconds`."""

    clients: int
    seconds: float
    search: Stats
    store: Stats
    errors: int
    first_error: str

    @property
    def requests(self) -> int:
        return self.search.count + self.store.count


# -- settings and Django -----------------------------------------------------------------


def settings_env(
    data_dir: Path, config_file: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This environment without SFM_* overrides, with a defaults-only config and `data_dir`
    (and `extra`, the backend's settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFM_")}
    env["SFM_CONFIG"] = str(config_file)
    env["SFM_DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    env["DJANGO_SETTINGS_MODULE"] = "somafractalmemory.server.settings"
    return env


def use_env(env: Mapping[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith("SFM_")]:
        del os.environ[key]
    os.environ.update(env)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; yields its URL; always dropped."""
    import psycopg

    name = f"sfm_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    log(f"[setup] created database {name}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        log(f"[done] dropped database {name}")


def flush_redis() -> None:
    """Empty the bench's Redis database, so no run or part reads another's cached vectors."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def start_django() -> float:
    """django.setup() and migrate; returns the migrate time in seconds."""
    import django
    from django.core.management import call_command

    django.setup()  # its LOGGING sends INFO to stderr; one line per request is noise here
    logging.getLogger("httpx").setLevel(logging.WARNING)
    clock = Clock()
    call_command("migrate", interactive=False, verbosity=0)
    return clock.seconds


def open_backends() -> tuple[float, float]:
    """Load the model and open the index; returns both times in seconds."""
    from somafractalmemory import backends

    clock = Clock()
    backends.embedder().embed(["warm-up"])
    model_s = clock.seconds
    clock = Clock()
    backends.vector_index()
    return model_s, clock.seconds


# -- storing -----------------------------------------------------------------------------


def new_memory(item: corpus.Item) -> NewMemory:
    from somafractalmemory.memories.services import NewMemory

    return NewMemory(
        content=item.content,
        type=item.type,
        importance=item.importance,
        metadata=item.metadata,
        created_at=item.created_at,
    )


def encode(texts: Sequence[str]) -> tuple[Matrix, Rate]:
    """The encoder alone, in the service's batch size: vectors and throughput."""
    from somafractalmemory import backends

    embedder = backends.embedder()
    progress = Progress("encode", len(texts))
    parts: list[Matrix] = []
    clock = Clock()
    for start in range(0, len(texts), ENCODER_BATCH):
        parts.append(embedder.embed(texts[start : start + ENCODER_BATCH]))
        progress.update(min(start + ENCODER_BATCH, len(texts)))
    seconds = clock.seconds
    return np.concatenate(parts).astype(np.float32, copy=False), Rate(len(texts), seconds)


def store_one_by_one(items: Sequence[corpus.Item]) -> tuple[list[str], Rate, Stats]:
    from somafractalmemory.memories import services

    ids: list[str] = []
    latencies: list[float] = []
    progress = Progress("remember", len(items))
    total = Clock()
    for item in items:
        clock = Clock()
        ids.append(services.remember(new_memory(item)).id)
        latencies.append(clock.ms)
        progress.update(len(ids))
    return ids, Rate(len(items), total.seconds), Stats.of(latencies)


def store_in_batches(items: Sequence[corpus.Item]) -> tuple[list[str], Rate, Stats]:
    from somafractalmemory.memories import services

    ids: list[str] = []
    latencies: list[float] = []
    progress = Progress("remember_many", len(items))
    total = Clock()
    for start in range(0, len(items), BATCH):
        chunk = [new_memory(item) for item in items[start : start + BATCH]]
        clock = Clock()
        ids.extend(m.id for m in services.remember_many(chunk))
        latencies.append(clock.ms)
        progress.update(len(ids))
    return ids, Rate(len(items), total.seconds), Stats.of(latencies)


def check_stored(expected: int) -> None:
    """Every memory has its SQL row and its vector, and nothing is owed."""
    from somafractalmemory import backends
    from somafractalmemory.memories.models import Memory, VectorTask

    rows, owed = Memory.objects.count(), VectorTask.objects.count()
    indexed = backends.vector_index().count()
    if rows != expected or indexed != expected or owed:
        raise RuntimeError(f"stored {expected}, found {rows} rows, {indexed} vectors, {owed} owed")


# -- searching ---------------------------------------------------------------------------


def time_recall(
    texts: Sequence[str], warm_up: Sequence[str], *, mode: str, filters: dict[str, Any] | None
) -> RecallStats:
    """services.recall per text, as the API calls it (top_k 10, no namespace)."""
    from somafractalmemory.memories import services

    query = services.Query(top_k=TOP_K, mode=mode, filters=filters)
    for text in warm_up:
        services.recall(text, query)
    total: list[float] = []
    embedding: list[float] = []
    index: list[float] = []
    for text in texts:
        result = services.recall(text, query)
        total.append(result.latency_ms)
        embedding.append(result.embedding_ms)
        index.append(result.index_ms)
    return RecallStats(Stats.of(total), Stats.of(embedding), Stats.of(index))


def time_index_only(
    vectors: Matrix, filters: dict[str, Any] | None
) -> tuple[list[list[str]], Stats]:
    """The dense leg alone: vector_index().search with precomputed vectors, top 10."""
    from somafractalmemory import backends
    from somafractalmemory.memories.models import DEFAULT_TENANT
    from somafractalmemory.retrieval.filters import parse

    index = backends.vector_index()
    where = parse(filters)

    def search(vector: Matrix) -> list[str]:
        hits = index.search(vector, tenant=DEFAULT_TENANT, namespace=None, where=where, top_k=TOP_K)
        return [hit.id for hit in hits]

    for vector in vectors[:WARM_UP]:
        search(vector)
    found: list[list[str]] = []
    latencies: list[float] = []
    for vector in vectors:
        clock = Clock()
        found.append(search(vector))
        latencies.append(clock.ms)
    return found, Stats.of(latencies)


def exact_top_k(matrix: Matrix, query: Matrix) -> Ranks:
    """Row numbers of the TOP_K largest dot products, best first."""
    scores = matrix @ query
    top = np.argpartition(scores, -TOP_K)[-TOP_K:]
    ranks: Ranks = top[np.argsort(-scores[top])]
    return ranks


def time_numpy(matrix: Matrix, vectors: Matrix) -> tuple[list[Ranks], Stats]:
    for vector in vectors[:WARM_UP]:
        exact_top_k(matrix, vector)
    found: list[Ranks] = []
    latencies: list[float] = []
    for vector in vectors:
        clock = Clock()
        found.append(exact_top_k(matrix, vector))
        latencies.append(clock.ms)
    return found, Stats.of(latencies)


def recall_at_k(
    found: Sequence[Sequence[str]], exact: Sequence[Ranks], ids: Sequence[str]
) -> float:
    """Share of the exact top-k ids that the index returned."""
    hits = sum(
        len(set(got) & {ids[i] for i in want}) for got, want in zip(found, exact, strict=True)
    )
    return hits / (len(exact) * TOP_K)


def filter_mask(items: Sequence[corpus.Item]) -> npt.NDArray[np.bool_]:
    return np.array(
        [all(item.metadata.get(k) == v for k, v in FILTER.items()) for item in items], dtype=bool
    )


def measure_search(
    queries: QuerySets, items: Sequence[corpus.Item], ids: Sequence[str], matrix: Matrix
) -> SearchResults:
    from somafractalmemory import backends

    log(f"[search] {len(queries.plain)} queries through services.recall: hybrid, again, vector")
    hybrid = time_recall(queries.plain, queries.warm_up, mode="hybrid", filters=None)
    repeat = time_recall(queries.plain, (), mode="hybrid", filters=None)
    vector = time_recall(queries.vector, (), mode="vector", filters=None)
    vectors = backends.embedder().embed(queries.plain)
    log("[search] index only, numpy reference")
    index_found, index_only = time_index_only(vectors, None)
    exact, numpy_stats = time_numpy(matrix, vectors)

    log(f"[search] {len(queries.filtered)} other queries, filtered by {json.dumps(FILTER)}")
    filtered = time_recall(queries.filtered, queries.warm_up, mode="hybrid", filters=FILTER)
    mask = filter_mask(items)
    rows = np.flatnonzero(mask)
    filtered_vectors = backends.embedder().embed(queries.filtered)
    filtered_found, filtered_index_only = time_index_only(filtered_vectors, FILTER)
    sub_exact, filtered_numpy = time_numpy(np.ascontiguousarray(matrix[mask]), filtered_vectors)
    from somafractalmemory.memories.recall import candidate_pool

    return SearchResults(
        pool=candidate_pool(TOP_K),
        hybrid=hybrid,
        repeat=repeat,
        vector=vector,
        filtered=filtered,
        index_only=index_only,
        numpy=numpy_stats,
        recall=recall_at_k(index_found, exact, ids),
        filtered_share=float(mask.mean()),
        filtered_index_only=filtered_index_only,
        filtered_numpy=filtered_numpy,
        filtered_recall=recall_at_k(filtered_found, [rows[r] for r in sub_exact], ids),
    )


def run_in_process(
    items: Sequence[corpus.Item], queries: QuerySets, singles: int
) -> tuple[Startup, StoreResults, SearchResults]:
    migrate_s = start_django()
    model_s, index_s = open_backends()
    startup = Startup(migrate_s, model_s, index_s)
    log(f"[setup] migrate {migrate_s:.1f} s, model {model_s:.1f} s, index {index_s:.1f} s")

    # Batches first: the single stores then land in a full collection, as in use (into an
    # empty one they are faster). The encoder pass comes after the stores: Milvus Lite answers
    # slower for a while after many small upserts, and the pass gives it that while.
    batch_ids, batch, batch_latency = store_in_batches(items[: len(items) - singles])
    single_ids, single, single_latency = store_one_by_one(items[len(items) - singles :])
    check_stored(len(items))
    matrix, encoder = encode([item.content for item in items])
    stores = StoreResults(encoder, single, single_latency, batch, batch_latency)

    search = measure_search(queries, items, batch_ids + single_ids, matrix)

    from somafractalmemory import backends

    backends.reset()  # close Milvus Lite before the HTTP part runs
    from django.db import connections

    connections.close_all()
    return startup, stores, search


# -- HTTP --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sfm_command() -> str:
    beside = Path(sys.executable).parent / "sfm"
    found = str(beside) if beside.is_file() else shutil.which("sfm")
    if found is None:
        raise RuntimeError("cannot find the `sfm` command; run `make install`")
    return found


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(process: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(base_url=base, timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}):\n{tail(log_path)}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT:.0f} s:\n{tail(log_path)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group; SIGKILL what is left after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # children the master left behind
        return


@contextlib.contextmanager
def lite_server(env: Mapping[str, str], log_path: Path) -> Iterator[str]:
    """`sfm milvus-lite` (the Lite engine over gRPC, a Milvus server's code path) in its own
    session; yields its URI once it answers; always stopped."""
    from pymilvus import MilvusClient

    port = free_port()
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sfm_command(), "milvus-lite", "--port", str(port)],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"sfm milvus-lite exited:\n{tail(log_path)}")
                try:
                    MilvusClient(uri=uri, timeout=2).list_collections()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no answer from {uri}:\n{tail(log_path)}") from None
                    time.sleep(0.5)
            log(f"[setup] Milvus Lite serving over gRPC at {uri}")
            yield uri
        finally:
            stop(process)


@contextlib.contextmanager
def server(env: Mapping[str, str], log_path: Path, workers: int = 1) -> Iterator[str]:
    """A real `sfm serve` in its own session; yields its base URL; always stopped."""
    port = free_port()
    command = [sfm_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=dict(env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(process, base, log_path)
            yield base
        finally:
            stop(process)


def payload(item: corpus.Item) -> dict[str, Any]:
    return {
        "content": item.content,
        "type": item.type,
        "importance": item.importance,
        "metadata": item.metadata,
        "created_at": item.created_at.isoformat(),
    }


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[Any, float]:
    clock = Clock()
    response = client.post(path, json=body)
    elapsed = clock.ms
    if response.status_code != 200:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:500]}")
    return response.json(), elapsed


def http_batches(client: httpx.Client, items: Sequence[corpus.Item]) -> tuple[Rate, Stats]:
    latencies: list[float] = []
    progress = Progress("http batch", len(items))
    total = Clock()
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        body, ms = post(client, "/api/v2/memory/batch", {"memories": [payload(i) for i in chunk]})
        if len(body["memories"]) != len(chunk):
            raise RuntimeError("batch stored fewer memories than sent")
        latencies.append(ms)
        progress.update(start + len(chunk))
    return Rate(len(items), total.seconds), Stats.of(latencies)


def http_singles(client: httpx.Client, items: Sequence[corpus.Item]) -> tuple[Rate, Stats]:
    latencies: list[float] = []
    total = Clock()
    for item in items:
        latencies.append(post(client, "/api/v2/memory/store", payload(item))[1])
    return Rate(len(items), total.seconds), Stats.of(latencies)


def http_search(
    client: httpx.Client, queries: Sequence[str], warm_up: Sequence[str]
) -> tuple[Stats, Stats]:
    """End-to-end latency as the client sees it, and the server's own `latency_ms`."""
    for query in warm_up:
        post(client, "/api/v2/memory/search", {"query": query, "top_k": TOP_K})
    wall: list[float] = []
    reported: list[float] = []
    for query in queries:
        body, ms = post(client, "/api/v2/memory/search", {"query": query, "top_k": TOP_K})
        wall.append(ms)
        reported.append(float(body["latency_ms"]))
    return Stats.of(wall), Stats.of(reported)


class LoadTraffic:
    """What the concurrent clients send: unused questions in turn, and stores of new contents."""

    def __init__(self, questions: Sequence[str], items: Sequence[corpus.Item]) -> None:
        self.questions, self.items = questions, items
        self.lock = threading.Lock()
        self.asked = 0
        self.stored = 0

    def search(self) -> dict[str, Any]:
        with self.lock:
            question = self.questions[self.asked % len(self.questions)]
            self.asked += 1
        return {"query": question, "top_k": TOP_K, "mode": "hybrid"}

    def store(self) -> dict[str, Any]:
        with self.lock:
            k = self.stored
            self.stored += 1
        body = payload(self.items[k % len(self.items)])
        body["content"] = f"{body['content']} (load note {k})"
        return body


def http_load(base: str, clients: int, seconds: float, traffic: LoadTraffic) -> LoadResult:
    """`clients` threads, each with its own httpx.Client, for `seconds`: 80% search, 20% store."""
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"search": [], "store": []}
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def worker(number: int) -> None:
        rng = random.Random(1000 * clients + number)
        with httpx.Client(base_url=base, timeout=120.0, trust_env=False) as client:
            while time.perf_counter() < deadline:
                if rng.random() < SEARCH_SHARE:
                    kind, path, body = "search", "/api/v2/memory/search", traffic.search()
                else:
                    kind, path, body = "store", "/api/v2/memory/store", traffic.store()
                clock = Clock()
                try:
                    response = client.post(path, json=body)
                    problem = (
                        ""
                        if response.status_code == 200
                        else f"{path}: {response.status_code} {response.text[:200]}"
                    )
                except httpx.HTTPError as error:
                    problem = f"{path}: {type(error).__name__}: {error}"
                elapsed = clock.ms
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies[kind].append(elapsed)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    clock = Clock()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(
        clients,
        clock.seconds,
        Stats.of(latencies["search"]),
        Stats.of(latencies["store"]),
        len(errors),
        errors[0] if errors else "",
    )


def run_http(
    env: Mapping[str, str],
    batch_items: Sequence[corpus.Item],
    single_items: Sequence[corpus.Item],
    queries: QuerySets,
    log_path: Path,
    load_seconds: float,
    workers: int,
) -> HttpResults:
    log(f"[http] starting `sfm serve --workers {workers}`")
    clock = Clock()
    with (
        server(env, log_path, workers) as base,
        httpx.Client(base_url=base, timeout=300.0, trust_env=False) as client,
    ):
        startup_s = clock.seconds
        log(f"[http] ready after {startup_s:.1f} s at {base}")
        batch, batch_latency = http_batches(client, batch_items)
        # Searches before the single stores, which slow Milvus Lite down for a while.
        log(f"[http] {len(queries.http)} searches")
        search, search_server = http_search(client, queries.http, queries.warm_up)
        log(f"[http] {len(single_items)} single stores")
        single, single_latency = http_singles(client, single_items)
        traffic = LoadTraffic(queries.load, batch_items)
        load: list[LoadResult] = []
        for clients in CONCURRENCY if load_seconds > 0 else ():
            log(f"[http] {clients} concurrent clients for {load_seconds:.0f} s")
            result = http_load(base, clients, load_seconds, traffic)
            log(
                f"[http] {result.requests / result.seconds:,.1f} requests/s, "
                f"{result.errors} errors {result.first_error}"
            )
            load.append(result)
    return HttpResults(
        batch, batch_latency, single, single_latency, search, search_server, startup_s, load
    )


# -- report ------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    uname = subprocess.run(["uname", "-srm"], capture_output=True, text=True, check=False)
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
        if line.startswith("model name")
    ]
    meminfo = Path("/proc/meminfo")
    kib = (
        next(
            (
                int(line.split()[1])
                for line in meminfo.read_text().splitlines()
                if line.startswith("MemTotal")
            ),
            0,
        )
        if meminfo.is_file()
        else 0
    )
    import torch

    return {
        "os": uname.stdout.strip() or platform.platform(),
        "cpu": models[0] if models else (platform.processor() or "unknown"),
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "torch_threads": str(torch.get_num_threads()),
        "ram": f"{kib / 1024 / 1024:.1f} GiB" if kib else "unknown",
    }


def revision() -> str:
    """The commit measured, and whether the source differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return f"`{commit}`" + (
        " with uncommitted changes in src/" if git("status", "--porcelain", "src") else ""
    )


def versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    names = (
        "torch",
        "sentence-transformers",
        "pymilvus",
        "milvus-lite",
        "django",
        "numpy",
        "psycopg",
        "redis",
    )
    return {"python": platform.python_version()} | {name: version(name) for name in names}


def ms(value: float) -> str:
    return "-" if value != value else f"{value:,.2f}"


def latency_row(label: str, stats: Stats) -> str:
    return f"| {label} | {ms(stats.p50)} | {ms(stats.p95)} | {ms(stats.p99)} | {ms(stats.mean)} |"


def rate_row(label: str, rate: Rate, stats: Stats | None, per: str) -> str:
    latency = f"{ms(stats.p50)} / {ms(stats.p95)} ms {per}" if stats else "-"
    return (
        f"| {label} | {rate.items:,} | {rate.seconds:,.1f} | {rate.per_second:,.0f} | {latency} |"
    )


def settings_text(backend: str, milvus_server: bool) -> str:
    if milvus_server:
        index = (
            "; the index is Milvus Lite's engine served over gRPC by `sfm milvus-lite` in its "
            "own process (`SFM_MILVUS_URI=http://127.0.0.1:<port>`, the Milvus server code "
            "path), and the HTTP part runs on the in-process part's database and index"
        )
        return settings_text(backend, False) + index
    if backend == "postgres+redis":
        return (
            "built-in defaults in a fresh temporary data directory (no config.yaml), with "
            "`SFM_DATABASE_URL` set to a fresh PostgreSQL database (`CREATE DATABASE "
            "sfm_bench_<random>` on 127.0.0.1:5432, dropped afterwards; the server gets its own) "
            f"and `SFM_REDIS_URL={REDIS_URL}` (flushed before each part); Milvus Lite as in "
            "the default"
        )
    return (
        "built-in defaults in a fresh temporary data directory "
        "(no config.yaml, no `SFM_*` overrides): SQLite, Milvus Lite, LocMem cache"
    )


def render_setup(
    args: argparse.Namespace, startup: Startup, info: RunInfo, server_threads: int
) -> list[str]:
    box, ver = machine(), versions()
    n, singles, queries = args.n, args.singles, args.queries
    return [
        "| | |",
        "|---|---|",
        f"| date | {info.when:%Y-%m-%d %H:%M} UTC |",
        f"| code | {info.code} |",
        f"| machine | `{box['os']}` |",
        f"| CPU | {box['cpu']}, {box['cores']} cores, torch threads {box['torch_threads']} |",
        f"| RAM | {box['ram']} |",
        f"| Python | {ver['python']} |",
        f"| torch / sentence-transformers | {ver['torch']} / {ver['sentence-transformers']} |",
        f"| pymilvus / milvus-lite | {ver['pymilvus']} / {ver['milvus-lite']} |",
        f"| Django / numpy / psycopg / redis | {ver['django']} / {ver['numpy']} / "
        f"{ver['psycopg']} / {ver['redis']} |",
        f"| backend | `{args.backend}` |",
        f"| N (memories, in process) | {n:,}: {n - singles:,} in batches of {BATCH:,}, then "
        f"{singles:,} one at a time |",
        f"| Q (queries) | {queries:,} per series, different questions in each series, top_k "
        f"{TOP_K}, after {WARM_UP} untimed warm-up calls |",
        f"| load average before the run | {info.load} (1, 5, 15 min) |",
        f"| other processes during the run | {info.others} |",
        f"| settings | {settings_text(args.backend, args.milvus_server)} |",
        f"| server | `sfm serve`, {args.workers} worker process"
        f"{'es' if args.workers > 1 else ''}, {server_threads} request threads each |",
        f"| start-up (in process) | migrate {startup.migrate_s:.1f} s, model load "
        f"{startup.model_s:.1f} s, index open {startup.index_s:.1f} s |",
        f"| whole run | {info.seconds / 60:.1f} min |",
    ]


def render_store(stores: StoreResults) -> list[str]:
    ratio = stores.batch.per_second / stores.encoder.per_second
    return [
        "| what | memories | seconds | memories/s | latency p50 / p95 |",
        "|---|---:|---:|---:|---|",
        rate_row(
            f"encoder alone: `embedder().embed`, batches of {ENCODER_BATCH}",
            stores.encoder,
            None,
            "",
        ),
        rate_row(
            f"`services.remember_many`, batches of {BATCH:,}",
            stores.batch,
            stores.batch_latency,
            "per batch",
        ),
        rate_row(
            "`services.remember`, one at a time, after the batches",
            stores.single,
            stores.single_latency,
            "per memory",
        ),
        "",
        f"`remember_many` / encoder alone: **{ratio:.2f}** (1.00 would mean that validation, "
        "SQL, the outbox and the Milvus upsert cost nothing next to the embedding).",
    ]


def recall_rows(label: str, stats: RecallStats, index: str) -> list[str]:
    return [
        latency_row(f"{label}: total (`latency_ms`)", stats.total),
        latency_row("… query embedding (`embedding_ms`)", stats.embedding),
        latency_row(f"… {index} (`index_ms`)", stats.index),
    ]


def render_search(search: SearchResults, n: int) -> list[str]:
    ratio = search.index_only.p50 / search.numpy.p50
    matching = round(search.filtered_share * n)
    spec = json.dumps(FILTER)
    both = (
        f"index: dense, context-vector, BM25 and context-BM25 legs, {search.pool} candidates each"
    )
    return [
        "| what | p50 ms | p95 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
        *recall_rows("`services.recall`, default mode `hybrid`", search.hybrid, both),
        *recall_rows("the same queries again (query-embedding cache)", search.repeat, both),
        *recall_rows(
            "`services.recall`, mode `vector`",
            search.vector,
            f"index: dense and context-vector legs, {search.pool} candidates each",
        ),
        *recall_rows(f"`services.recall`, `hybrid`, filter `{spec}`", search.filtered, both),
        latency_row(
            f"index only: `vector_index().search`, top {TOP_K}, precomputed vector",
            search.index_only,
        ),
        latency_row(f"exact reference: numpy brute force over {n:,} x 384 float32", search.numpy),
        latency_row(f"index only, filter `{spec}`", search.filtered_index_only),
        latency_row(
            f"numpy brute force over the {matching:,} matching rows", search.filtered_numpy
        ),
        "",
        f"- index only p50 / numpy p50: **{ratio:.1f}x**",
        f"- recall@{TOP_K} of the dense index against the exact numpy top {TOP_K}: "
        f"**{search.recall:.3f}**, and **{search.filtered_recall:.3f}** with the filter "
        f"(which selects {search.filtered_share:.1%} of the memories)",
        *render_hybrid_vs_vector(search),
    ]


def render_hybrid_vs_vector(search: SearchResults) -> list[str]:
    hybrid, vector = search.hybrid.index.p50, search.vector.index.p50
    ratio = hybrid / vector
    verdict = "met" if ratio <= 2.0 else "**not met**"
    return [
        "",
        "Embedding excluded (`index_ms` of the same `services.recall` series above). `index_ms` "
        "is the index calls of `recall`: mode `vector` makes 2 Milvus searches (memory and "
        "context vectors), `hybrid` 4 (those plus BM25 over memory and context text), each for "
        f"{search.pool} candidates; *index only* is 1 dense search for the top {TOP_K}.",
        "",
        "| hybrid `index_ms` p50 | vector `index_ms` p50 | hybrid / vector | "
        "index only p50 | numpy p50 |",
        "|---:|---:|---:|---:|---:|",
        f"| {ms(hybrid)} | {ms(vector)} | **{ratio:.2f}x** | {ms(search.index_only.p50)} | "
        f"{ms(search.numpy.p50)} |",
        "",
        f"Target hybrid <= 2x vector: {verdict}.",
    ]


def render_load(load: Sequence[LoadResult]) -> list[str]:
    if not load:
        return []
    lines = [
        f"Throughput under concurrency: each client is a thread with its own `httpx.Client`, "
        f"sending back to back for {load[0].seconds:.0f} s a mix of "
        f"{SEARCH_SHARE:.0%} `POST /api/v2/memory/search` (hybrid, top_k {TOP_K}, a question "
        f"not asked before in the run) and {1 - SEARCH_SHARE:.0%} `POST /api/v2/memory/store` "
        "(new contents). The clients run on the same 2 cores as the server.",
        "",
        "| clients | seconds | requests | requests/s | searches | search p50 / p95 / p99 ms "
        "| stores | store p50 / p95 / p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for r in load:
        lines.append(
            f"| {r.clients} | {r.seconds:.1f} | {r.requests:,} | {r.requests / r.seconds:,.1f} | "
            f"{r.search.count:,} | {ms(r.search.p50)} / {ms(r.search.p95)} / {ms(r.search.p99)} "
            f"| {r.store.count:,} | {ms(r.store.p50)} / {ms(r.store.p95)} / {ms(r.store.p99)} "
            f"| {r.errors} |"
        )
    errors = [f"- {r.clients} clients, first error: `{r.first_error}`" for r in load if r.errors]
    return lines + (["", *errors] if errors else [])


def render_http(http: HttpResults) -> list[str]:
    return [
        "| what | memories | seconds | memories/s | latency p50 / p95 |",
        "|---|---:|---:|---:|---|",
        rate_row(
            f"`POST /api/v2/memory/batch`, {BATCH:,} per call",
            http.batch,
            http.batch_latency,
            "per call",
        ),
        rate_row(
            "`POST /api/v2/memory/store`, one at a time",
            http.single,
            http.single_latency,
            "per call",
        ),
        "",
        "| search | p50 ms | p95 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
        latency_row("`POST /api/v2/memory/search`, end to end (client)", http.search),
        latency_row("… of which the server's `latency_ms`", http.search_server),
        "",
        *render_load(http.load),
    ]


def render_notes() -> list[str]:
    return [
        "## How to read this",
        "",
        "- Latencies are per call, one call at a time, after untimed warm-up calls (except in "
        "the concurrency table, where they include queueing behind the other clients). "
        "`latency_ms`, `embedding_ms` and `index_ms` are the fields of the service's `Recall` "
        "result; the total also includes fusion, scoring and reading the hit rows from SQL.",
        "- Recall@10 is measured on the dense index alone: `services.recall` fuses the dense "
        "and BM25 legs and blends in recency and importance, so its top 10 is not meant to "
        "equal the nearest neighbours.",
        "- Order: batches, single stores, the encoder pass, then searches (about as long after "
        "the last write as the encoder pass takes); over HTTP: batches, searches, single "
        "stores. Right after hundreds of single upserts Milvus Lite answers slower for a while "
        "(about 1 ms at 10,000 memories, gone some 20 s later), so searches do not follow them.",
        "- Each series asks its own questions, so a query-embedding cache (when the code has "
        "one) cannot answer one series from another's; the *same queries again* rows repeat "
        "the first series to show the cached path.",
        "- *Index only* calls `backends.vector_index().search` with a vector embedded "
        "beforehand (tenant `default`, no namespace, no filter), so it leaves out the model.",
        "- The numpy reference holds the same vectors (the encoder-only pass over the same "
        "texts) in one normalised float32 matrix: a matrix-vector product, `argpartition`, "
        "then a sort of the top 10. It is exact, so it is also the ground truth for recall@10.",
        "- Store rates include everything the service does per call: validation, embedding, "
        "the SQL transaction (SQLite: WAL, `synchronous=FULL`; or PostgreSQL), the outbox rows "
        "and the Milvus upsert.",
        "- `postgres+redis` changes the SQL store and the cache (query embeddings) only; the "
        "vector index is Milvus Lite in both (no Milvus server here).",
        "- The concurrency runs follow the one-at-a-time HTTP series on the same server, so "
        "the collection grows by the stores they make; the client threads share the machine's "
        "CPU with the server (Python clients, so the client side costs CPU too).",
        "- The HTTP server is a separate process started with `sfm serve` on a free port; the "
        "client waits for `GET /readyz` before timing anything and stops it with SIGTERM.",
    ]


def render_warning(info: RunInfo) -> list[str]:
    if info.others_share < CONTENDED:
        return []
    return [
        f"> **Not representative:** other processes used {info.others} while this ran, "
        "so these numbers include waiting for the CPU. Run again on a quiet machine.",
        "",
    ]


SECTION_ORDER = ("scale", "embedded", "postgres+redis", "embedded-100k")
BLOCK = re.compile(r"<!-- (bench:[\w+.-]+|locomo):start -->.*?<!-- \1:end -->\n?", re.DOTALL)


def render_header() -> list[str]:
    return [
        "# Benchmarks",
        "",
        "`bench/run.py` measures the service on synthetic agent memories (templates about "
        "people, places, preferences, events, dates and numbers, with `category`, `user_id`, "
        "`source` and `confidence` metadata; seeded, so every run stores the same texts): "
        "storing and searching through the service layer in process, the bare vector index "
        "against an exact numpy reference, then the same over HTTP against a real `sfm serve`, "
        "one request at a time and with 1, 4 and 16 concurrent clients. Each backend has its "
        "own section below; a run replaces only its own section.",
        "",
        "Reproduce: `make bench` (the embedded default: SQLite, Milvus Lite, LocMem cache; "
        '10,000 memories), `make bench ARGS="--backend postgres+redis"` (PostgreSQL on '
        "127.0.0.1:5432 and Redis on 127.0.0.1:6379, Milvus Lite), "
        '`make bench ARGS="--n 100000 --no-http"` (in process only; its own section). '
        "Options: `--backend`, `--n`, `--queries`, `--singles`, `--http-memories`, "
        "`--http-singles`, `--load-seconds`, `--no-http`, `--section`, `--out`. "
        "`make bench` then runs `bench/scale.py` (search latency at 10,000 and 100,000 "
        'memories, with a plot and a profile; `make bench-scale ARGS="--sizes '
        '10000,100000,1000000"` for a million); `make bench ARGS=--quick` runs both small '
        "(about 4 minutes).",
        "",
    ]


def render_section(
    args: argparse.Namespace,
    info: RunInfo,
    results: tuple[Startup, StoreResults, SearchResults],
    http: HttpResults | None,
    http_memories: int,
    server_threads: int,
) -> str:
    startup, stores, search = results
    lines = [
        f"## Backend `{args.backend}`, {args.n:,} memories"
        + (
            f", index behind `sfm milvus-lite`, {args.workers} worker process"
            + ("es" if args.workers > 1 else "")
            if args.milvus_server
            else ""
        )
        + (", in process only" if http is None else ""),
        "",
        *render_warning(info),
        "### Setup",
        "",
        *render_setup(args, startup, info, server_threads),
        "",
        "### Store, service layer (in process)",
        "",
        *render_store(stores),
        "",
        f"### Search, service layer (in process, {args.n:,} memories, {args.queries:,} queries)",
        "",
        *render_search(search, args.n),
        "",
    ]
    if http is not None:
        lines += [
            (
                f"### HTTP (`sfm serve --workers {args.workers}` over the in-process part's "
                f"{args.n:,} memories, then {http_memories:,} more, httpx on localhost)"
                if args.milvus_server
                else f"### HTTP (`sfm serve` in its own process and data directory, "
                f"{http_memories:,} memories, httpx on localhost)"
            ),
            "",
            f"Server ready {http.startup_s:.1f} s after start (migrate, model load, index open).",
            "",
            *render_http(http),
            "",
        ]
    return "\n".join(lines)


def write_report(path: Path, section: str, body: str) -> str:
    """Replace `section` in the report at `path`; keep the other sections and the LoCoMo block."""
    old = path.read_text() if path.is_file() else ""
    blocks = {m.group(1): m.group(0).rstrip("\n") for m in BLOCK.finditer(old)}
    name = f"bench:{section}"
    blocks[name] = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
    known = [f"bench:{s}" for s in SECTION_ORDER]
    bench = [k for k in known if k in blocks]
    bench += sorted(k for k in blocks if k.startswith("bench:") and k not in known)
    parts = ["\n".join(render_header()), *(blocks[k] for k in bench)]
    parts.append("\n".join(render_notes()))
    if "locomo" in blocks:
        parts.append(blocks["locomo"])
    report = "\n\n".join(part.rstrip() for part in parts) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    return report


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="memories stored in process")
    parser.add_argument("--queries", type=int, default=200, help="search queries per series")
    parser.add_argument("--singles", type=int, default=300, help="of N, stored one at a time")
    parser.add_argument(
        "--http-memories", type=int, default=5_000, help="batch-stored over HTTP (at most N)"
    )
    parser.add_argument("--http-singles", type=int, default=200, help="stored singly over HTTP")
    parser.add_argument("--backend", choices=BACKENDS, default="embedded")
    parser.add_argument(
        "--load-seconds", type=float, default=15.0, help="per concurrency level (0: none)"
    )
    parser.add_argument("--no-http", action="store_true", help="in process only")
    parser.add_argument(
        "--milvus-server",
        action="store_true",
        help="index behind `sfm milvus-lite` (gRPC); the HTTP part reuses the in-process data",
    )
    parser.add_argument("--workers", type=int, default=1, help="`sfm serve --workers`")
    parser.add_argument(
        "--section",
        help="report section to replace [the backend, with -<N/1000>k when N is not 10,000]",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (2,000 memories, short series) into section <backend>-quick",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.singles = 2_000, 50, 50
        args.http_memories, args.http_singles, args.load_seconds = 1_000, 50, 5.0
        args.section = args.section or f"{args.backend}-quick"
    if args.workers > 1 and not args.milvus_server:
        parser.error("--workers > 1 needs --milvus-server (one process owns a Lite file)")
    if args.section is None:
        args.section = (
            args.backend
            + ("-milvus-server" if args.milvus_server else "")
            + ("" if args.n == 10_000 else f"-{args.n // 1000}k")
            + (f"-{args.workers}w" if args.workers > 1 else "")
        )
    if not 0 < args.singles < args.n:
        parser.error("--singles must be at least 1 and below --n")
    if args.queries < 1:
        parser.error("--queries must be at least 1")
    args.http_memories = max(1, min(args.http_memories, args.n))
    if args.milvus_server:
        args.http_memories = min(args.http_memories, 2 * BATCH)  # added to N, not re-stored
    return args


def backend_env(backend: str, stack: contextlib.ExitStack) -> dict[str, str]:
    """SFM_* settings of one part of the run (a fresh database each call)."""
    if backend == "embedded":
        return {}
    flush_redis()
    return {
        "SFM_DATABASE_URL": stack.enter_context(postgres_database()),
        "SFM_REDIS_URL": REDIS_URL,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    when, code = datetime.now(UTC), revision()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    others = OtherLoad()
    others.start()
    run = Clock()
    # With --milvus-server the HTTP part adds new memories to the in-process part's N.
    first_http = args.n if args.milvus_server else 0
    items = corpus.memories(max(args.n, first_http + args.http_memories + args.http_singles))
    queries = QuerySets.make(args.queries)
    log(f"[setup] {len(items):,} memories and 4 x {args.queries} queries generated")
    http: HttpResults | None = None
    with (
        tempfile.TemporaryDirectory(prefix="sfm-bench-", ignore_cleanup_errors=True) as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        config_file = work / "defaults.yaml"
        config_file.write_text("# bench/run.py: built-in defaults only\n")
        index: dict[str, str] = {}
        if args.milvus_server:
            milvus_env = settings_env(work / "milvus", config_file)
            index["SFM_MILVUS_URI"] = stack.enter_context(
                lite_server(milvus_env, work / "milvus.log")
            )
        in_process = settings_env(
            work / "in-process", config_file, {**backend_env(args.backend, stack), **index}
        )
        use_env(in_process)
        from somafractalmemory.conf import get_config

        results = run_in_process(items[: args.n], queries, args.singles)
        server_threads = get_config().threads
        http_items = items[first_http : first_http + args.http_memories + args.http_singles]
        if not args.no_http:
            http = run_http(
                in_process
                if args.milvus_server
                else settings_env(work / "server", config_file, backend_env(args.backend, stack)),
                http_items[: args.http_memories],
                http_items[args.http_memories :],
                queries,
                work / "server.log",
                args.load_seconds,
                args.workers,
            )
    info = RunInfo(when, code, load, *others.finish(), run.seconds)
    log(f"[done] other processes used {info.others}")
    body = render_section(args, info, results, http, len(http_items), server_threads)
    write_report(args.out, args.section, body)
    print(body)
    log(f"[done] {run.seconds / 60:.1f} min; section {args.section} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
