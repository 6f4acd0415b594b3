"""Settings: defaults < config.yaml < SFM_* environment; the reference is generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from somafractalmemory.conf import Config, load_config, settings_reference
from somafractalmemory.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_serve_the_embedded_stack(tmp_path: Path) -> None:
    config = load_config({"SFM_CONFIG": str(tmp_path / "absent.yaml")})
    assert config == Config()
    assert config.api_port == 10101 and config.effective_database_url is None
    assert config.effective_milvus_uri == str(Path("sfm-data") / "milvus.db")
    assert config.local_index  # the in-process engine, not that Lite file


def test_the_vector_engine_follows_the_milvus_uri_unless_named(tmp_path: Path) -> None:
    absent = {"SFM_CONFIG": str(tmp_path / "absent.yaml")}
    server = {**absent, "SFM_MILVUS_URI": "http://milvus:19530"}
    assert not load_config(server).local_index
    assert not load_config({**absent, "SFM_VECTOR_ENGINE": "milvus"}).local_index  # Lite file
    assert load_config({**absent, "SFM_VECTOR_ENGINE": "local"}).local_index


def test_queries_run_on_the_int8_export_unless_full_is_asked(tmp_path: Path) -> None:
    from somafractalmemory import backends

    absent = {"SFM_CONFIG": str(tmp_path / "absent.yaml")}
    assert backends.build_embedder(load_config(absent)).query_name.endswith("+int8")
    full = load_config({**absent, "SFM_QUERY_ENCODER": "full"})
    embedder = backends.build_embedder(full)
    assert embedder.query_name == embedder.name
    with pytest.raises(ConfigError, match="query_encoder"):
        load_config({**absent, "SFM_QUERY_ENCODER": "fp16"})


def test_yaml_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("namespace: agents\nvector_dim: 384\napi_port: 9000\nmilvus_host: milvus\n")
    config = load_config({"SFM_CONFIG": str(path), "SFM_API_PORT": "9100", "SFM_DEBUG": "yes"})
    assert config.namespace == "agents" and config.vector_dim == 384
    assert config.api_port == 9100 and config.debug is True
    assert config.effective_milvus_uri == "http://milvus:19530"


def test_original_postgres_key_maps_to_database_url(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('postgres_url: "postgresql://soma:soma@postgres:5432/somamemory"\n')
    config = load_config({"SFM_CONFIG": str(path)})
    assert config.effective_database_url == "postgresql://soma:soma@postgres:5432/somamemory"
    config = load_config({"SFM_CONFIG": str(path), "SFM_DATABASE_URL": "postgresql://x/y"})
    assert config.effective_database_url == "postgresql://x/y"


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("api_port: many\n", {}),
        ("colour: blue\n", {}),
        ("- a list\n", {}),
        ("key: [unclosed\n", {}),
        ("", {"SFM_DEBUG": "perhaps"}),
        ("", {"SFM_EMBEDDER": "magic"}),
        ("", {"SFM_EMBEDDER": "http"}),
        ("", {"SFM_EMBEDDING_RUNTIME": "cuda"}),
        ("", {"SFM_VECTOR_ENGINE": "lucene"}),
        ("", {"SFM_VECTOR_ENGINE": "local", "SFM_MILVUS_URI": "http://milvus:19530"}),
        ("", {"SFM_LOCAL_SEARCH_EF": "0"}),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config({"SFM_CONFIG": str(path), **env})


def test_sfm_config_masks_secrets(tmp_path: Path) -> None:
    env = {"SFM_CONFIG": str(tmp_path / "none.yaml"), "SFM_EMBEDDING_API_KEY": "sk-secret"}
    shown = subprocess.run(
        [sys.executable, "-m", "somafractalmemory.cli", "config"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    ).stdout
    assert "sk-secret" not in shown
    settings = json.loads(shown)
    assert settings["embedding_api_key"] == "***" and settings["api_port"] == 10101


def test_settings_reference_is_current() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings_reference(), "run `make docs`"


def test_the_embedded_database_keeps_its_connection_between_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, django_db_blocker: Any
) -> None:
    """Each request thread keeps its SQLite connection (opening one and running its pragmas
    cost 0.4 ms of every request): what Django does at a request's start and end leaves it
    open, and it is the configured one (WAL, full sync)."""
    from django.db.utils import ConnectionHandler

    from somafractalmemory.server import settings as server_settings

    monkeypatch.setattr(server_settings, "CONFIG", Config(data_dir=tmp_path))
    connection = ConnectionHandler(server_settings._databases())["default"]
    with django_db_blocker.unblock():  # its own database, not the test one
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                assert cursor.fetchone()[0] == "wal"
                cursor.execute("PRAGMA synchronous")
                assert cursor.fetchone()[0] == 2  # FULL
            held = connection.connection
            connection.close_if_unusable_or_obsolete()  # close_old_connections, per request
            assert held is not None and connection.connection is held
        finally:
            connection.close()
    assert (tmp_path / "sfm.sqlite3").exists()


def test_dotenv_lines_sit_between_config_yaml_and_the_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n\nSFM_NAMESPACE=from-dotenv\nexport SFM_API_PORT='10202'\n"
        'SFM_AUTH="required"\n'
    )
    config = tmp_path / "config.yaml"
    config.write_text("namespace: from-yaml\nauth: optional\n")
    env = {"SFM_ENV_FILE": str(dotenv), "SFM_CONFIG": str(config)}
    assert load_config(env).namespace == "from-dotenv"
    assert load_config(env).auth == "required" and load_config(env).api_port == 10202
    assert load_config({**env, "SFM_NAMESPACE": "from-env"}).namespace == "from-env"
    without = {"SFM_CONFIG": str(config), "SFM_ENV_FILE": str(tmp_path / "none")}
    assert load_config(without).namespace == "from-yaml"
    dotenv.write_text("SFM_NAMESPACE\n")
    with pytest.raises(ConfigError, match=r"\.env:1: expected KEY=VALUE"):
        load_config(env)
