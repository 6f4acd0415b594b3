"""Shared fixtures. The embedding model and the vector index are built once per run."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# Each run gets its own data directory before anything reads the settings.
_RUN_DIR = Path(tempfile.mkdtemp(prefix="sfm-test-"))
os.environ["SFM_DATA_DIR"] = str(_RUN_DIR)
# One ONNX export of the model per run, shared by the servers the tests start.
os.environ.setdefault("SFM_MODEL_CACHE_DIR", str(_RUN_DIR / "models"))
os.environ.pop("SFM_CONFIG", None)
# Django's test client calls itself `testserver`: a host to answer besides loopback.
os.environ["SFM_ALLOWED_HOSTS"] = "testserver"

from somafractalmemory.conf import get_config  # noqa: E402

get_config.cache_clear()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(what: str, check: Any) -> None:
    """A configured service must answer; locally its absence skips the run, in CI it fails."""
    try:
        check()
    except Exception as exc:
        message = f"{what} is configured but unreachable: {exc}"
        if IN_CI:
            raise pytest.UsageError(message) from exc
        pytest.exit(f"skipped: {message}", returncode=0)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = get_config()
    url = config.effective_database_url
    if url:
        import psycopg

        dsn = url.replace("postgres://", "postgresql://", 1)
        _reachable(
            "PostgreSQL", lambda: psycopg.connect(dsn, dbname="postgres", connect_timeout=3).close()
        )
    if config.redis_url:
        import redis

        _reachable("Redis", lambda: redis.Redis.from_url(config.redis_url, socket_timeout=3).ping())


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """Each run gets its own PostgreSQL test database, so parallel runs never collide."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):
        database.setdefault("TEST", {})["NAME"] = f"test_sfm_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """The test database, whose connections on the search legs' threads are closed before
    it is dropped."""
    yield
    from somafractalmemory.memories import recall

    recall.close_leg_connections()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-shift",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="Run with this process's wall clock moved DAYS ahead (it keeps ticking): no test "
        "may depend on today's date. Monotonic clocks and server processes are not moved.",
    )


_TEST_MILVUS = os.environ.get("SFM_TEST_MILVUS", "")
MILVUS_SERVER = _TEST_MILVUS == "server" or _TEST_MILVUS.startswith(("http://", "https://"))
"""`SFM_TEST_MILVUS=server`: the run starts a real Milvus standalone server (tests/
milvus_server.py) and the whole suite uses it; `SFM_TEST_MILVUS=http://host:19530` uses that
server instead (deploy/docker-compose.yml's Milvus 2.5, say). Each test process and each server
process it starts works in a Milvus database of its own."""
_milvus: contextlib.ExitStack | None = None
EMBEDDED_RUN = not (MILVUS_SERVER or get_config().effective_database_url or get_config().redis_url)
"""The run on the built-in defaults alone (SQLite, LocMem, the local vector engine)."""
ON_SERVER = pytest.mark.skipif(
    not MILVUS_SERVER,
    reason="production-stack run only (make test runs it with SFM_TEST_MILVUS=server)",
)
ON_LITE = pytest.mark.skipif(
    not EMBEDDED_RUN, reason="Milvus Lite is tested once, in the embedded run (make test)"
)


@pytest.fixture(scope="module")
def milvus_database() -> Iterator[tuple[str, str]]:
    """A real Milvus standalone server (the run's, SFM_TEST_MILVUS=server, or one started for
    this module) and a database of this module's on it: (uri, database)."""
    from tests.milvus_server import FOR_TESTS, create_database, drop_database, standalone

    with contextlib.ExitStack() as stack:
        uri = os.environ["SFM_MILVUS_URI"] if MILVUS_SERVER else ""
        uri = uri or stack.enter_context(standalone(extra=FOR_TESTS)).uri
        db_name = create_database(uri, "module")
        stack.callback(drop_database, uri, db_name)
        yield uri, db_name


def _start_milvus() -> None:
    global _milvus
    from tests.milvus_server import FOR_TESTS, create_database, drop_database, standalone

    _milvus = contextlib.ExitStack()
    if _TEST_MILVUS == "server":
        uri = _milvus.enter_context(standalone(extra=FOR_TESTS)).uri
    else:
        uri = _TEST_MILVUS
    os.environ["SFM_MILVUS_URI"] = uri
    os.environ["SFM_MILVUS_DB"] = create_database(uri, "test")
    _milvus.callback(drop_database, uri, os.environ["SFM_MILVUS_DB"])
    get_config.cache_clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real server processes")
    if MILVUS_SERVER and _milvus is None:
        try:
            _start_milvus()
        except Exception as exc:
            # `milvus` is a dev dependency: its absence is an install bug, here as in CI.
            raise pytest.UsageError(f"cannot start the Milvus server: {exc}") from exc
    days = config.getoption("--clock-shift")
    if days:
        import time_machine

        moved = datetime.now(UTC) + timedelta(days=days)
        time_machine.travel(moved, tick=True).start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the Milvus server, also when tests failed or the run was interrupted."""
    global _milvus
    if _milvus is not None:
        _milvus.close()
        _milvus = None


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Change SFM_* settings for one test (the process-wide config is re-read)."""

    def put(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"SFM_{name.upper()}", value)
        get_config.cache_clear()

    yield put
    monkeypatch.undo()
    get_config.cache_clear()


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses: the vector index outlives each test's SQL rollback."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def run_dir() -> Path:
    return _RUN_DIR


class Api:
    """Django test client speaking JSON to /api/v2."""

    def __init__(self, key: str | None = None) -> None:
        from django.test import Client

        self.client = Client(headers={"Authorization": f"Bearer {key}"} if key else None)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        import json

        api_paths = ("/memory", "/graph", "/jobs", "/usage", "/admin", "/namespaces")
        url = f"/api/v2{path}" if path.startswith(api_paths) else path
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        elif params:
            kwargs["data"] = params
        elif method.lower() in ("post", "put", "patch"):
            kwargs.update(data=b"", content_type="application/json")  # no body at all
        return getattr(self.client, method.lower())(url, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = self.call(method, path, body, **params)
        assert response.status_code == 200, response.content
        return response.json()

    def error(self, status: int, method: str, path: str, body: Any = None, **params: Any) -> str:
        response = self.call(method, path, body, **params)
        assert response.status_code == status, response.content
        payload = response.json()
        assert set(payload) == {"error"}
        assert payload["error"]["message"]
        return str(payload["error"]["code"])


@pytest.fixture
def api(db: None) -> Iterator[Api]:
    yield Api()


@contextlib.contextmanager
def server_environment(data_dir: Path) -> Iterator[dict[str, str]]:
    """Environment for a real server process: `data_dir` and, on PostgreSQL, a database of
    its own (dropped afterwards)."""
    env = {**os.environ, "SFM_DATA_DIR": str(data_dir)}
    with contextlib.ExitStack() as stack:
        if MILVUS_SERVER:
            from tests.milvus_server import create_database, drop_database

            uri = env["SFM_MILVUS_URI"]
            env["SFM_MILVUS_DB"] = create_database(uri, "srv")
            stack.callback(drop_database, uri, env["SFM_MILVUS_DB"])
        yield from _with_database(env)


def _with_database(env: dict[str, str]) -> Iterator[dict[str, str]]:
    url = get_config().effective_database_url
    if not url:
        yield env
        return
    import psycopg

    name = f"sfm_srv_{uuid.uuid4().hex[:10]}"
    admin = url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env["SFM_DATABASE_URL"] = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield env
    finally:
        with psycopg.connect(admin, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def embedded(env: dict[str, str]) -> dict[str, str]:
    """`env` with the embedded index in its data directory, whatever the run uses."""
    return {k: v for k, v in env.items() if k not in ("SFM_MILVUS_URI", "SFM_MILVUS_DB")}


@pytest.fixture
def server_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with server_environment(tmp_path / "data") as env:
        yield env


class Live:
    """A running `sfm serve` (its base URL) and the environment of its data directory."""

    def __init__(self, base: str, env: dict[str, str], log: Path) -> None:
        self.base, self.env, self.log = base, env, log

    def sfm(self, *args: str) -> str:
        import subprocess
        import sys

        command = [sys.executable, "-m", "somafractalmemory.cli", *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One live server for a test module."""
    from tests.servers import free_port, server

    work = tmp_path_factory.mktemp("live")
    with server_environment(work / "data") as env:
        port = free_port()
        with server(env, port, work / "server.log"):
            yield Live(f"http://127.0.0.1:{port}", env, work / "server.log")


@pytest.fixture
def fresh_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The service uses an empty vector index of its own for this test: the run's kind (the
    embedded engine, or a database of its own on the run's Milvus server)."""
    from somafractalmemory import backends
    from somafractalmemory.vectors.base import VectorIndex
    from somafractalmemory.vectors.local import LocalIndex
    from somafractalmemory.vectors.milvus import MilvusIndex

    embedder = backends.embedder()
    with contextlib.ExitStack() as stack:
        if MILVUS_SERVER:
            from tests.milvus_server import create_database, drop_database

            uri = os.environ["SFM_MILVUS_URI"]
            name = create_database(uri, "own")
            stack.callback(drop_database, uri, name)
            index: VectorIndex = MilvusIndex(
                uri, model=embedder.name, dim=embedder.dim, db_name=name
            )
        else:
            index = LocalIndex(tmp_path / "own", model=embedder.name, dim=embedder.dim)
        monkeypatch.setattr(backends, "_index", index)
        yield index
        left = backends._index  # whichever index the test left in place
        if left is not None:
            left.close()
