"""What a user without the Makefile does: the original quick start (`pip install -r
requirements.txt`, `cp .env.example .env`, `python manage.py migrate`, `python manage.py
runserver`) in a fresh virtualenv, and the installed package serving from a directory
outside the checkout (`sfm migrate && sfm serve`): migrations, templates, policies and the
model come with the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMBEDDED_RUN
from tests.servers import free_port, server

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
    port = free_port()
    command = [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    with server(env, port, tmp_path / "runserver.log", command=command, cwd=site):
        store_and_search(f"http://127.0.0.1:{port}")


def test_the_installed_package_serves_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = clean_env(venv, tmp_path, SFM_DATA_DIR=str(outside / "data"))
    sfm = str(venv / "bin" / "sfm")
    migrated = subprocess.run(
        [sfm, "migrate"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    port = free_port()
    command = [sfm, "serve", "--port", str(port)]
    with server(env, port, tmp_path / "serve.log", command=command, cwd=outside):
        store_and_search(f"http://127.0.0.1:{port}")
