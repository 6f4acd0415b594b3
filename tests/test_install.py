"""What a user without the Makefile does: the original quick start (`pip install -r
requirements.txt`, `cp .env.example .env`, `python manage.py migrate`, `python manage.py
runserver`) in a fresh virtualenv, and the installed package serving from a directory
outside the checkout (`sfm migrate && sfm serve`): migrations, templates, policies and the
model come with the package."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMBEDDED_RUN
from tests.servers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EMBEDDED_RUN, reason="the embedded default's install, tested once"),
]
ROOT = Path(__file__).resolve().parent.parent


def test_requirements_txt_is_generated_from_pyproject() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import requirements  # deploy/requirements.py
    finally:
        sys.path.pop(0)
    assert (ROOT / "requirements.txt").read_text() == requirements.render(), (
        "run `make requirements`"
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with `pip install -r requirements.txt` done in a copy of the
    checkout (the service installed from it, not editable)."""
    work = tmp_path_factory.mktemp("install")
    copy = work / "checkout"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "sfm-data", "*.egg-info", "__pycache__", "build", ".*_cache"
        ),
    )
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
    done = subprocess.run(
        [*pip, "-r", "requirements.txt"], cwd=copy, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield env_dir


def store_and_search(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        body = {"content": "Quinn keeps the spare key under the blue pot", "type": "semantic"}
        stored = http.post("/api/v2/memory/store", json=body)
        assert stored.status_code == 200, stored.text
        found = http.post("/api/v2/memory/search", json={"query": "where is the spare key?"})
        assert found.status_code == 200, found.text
        assert found.json()["memories"][0]["id"] == stored.json()["id"]
        assert http.get("/").status_code == 200  # the dashboard's templates came along


@contextmanager
def serving(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run a server command until /readyz answers 200; its base URL; stopped at the end."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *command,
                *([f"127.0.0.1:{port}"] if "runserver" in command else ["--port", str(port)]),
            ],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def clean_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """Only what a fresh shell has: the venv first on PATH, no SFM_* of this run."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), **extra}


def test_the_original_quick_start_works_as_written(venv: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for name in ("manage.py", ".env.example", "config.yaml"):
        shutil.copy(ROOT / name, site / name)
    shutil.copy(site / ".env.example", site / ".env")  # cp .env.example .env
    env = clean_env(venv, tmp_path)
    python = str(venv / "bin" / "python")
    migrated = subprocess.run(
        [python, "manage.py", "migrate"], cwd=site, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert (site / "sfm-data" / "sfm.sqlite3").is_file()  # where .env put the data
    command = [python, "manage.py", "runserver", "--noreload"]
    with serving(command, site, env, tmp_path / "runserver.log") as base:
        store_and_search(base)


def test_the_installed_package_serves_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = clean_env(venv, tmp_path, SFM_DATA_DIR=str(outside / "data"))
    sfm = str(venv / "bin" / "sfm")
    migrated = subprocess.run(
        [sfm, "migrate"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    with serving([sfm, "serve"], outside, env, tmp_path / "serve.log") as base:
        store_and_search(base)
