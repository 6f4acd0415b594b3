"""Django settings, derived from `somafractalmemory.conf` (the only place settings live)."""

from __future__ import annotations

from typing import Any

import dj_database_url

from somafractalmemory.conf import get_config
from somafractalmemory.logs import logging_config

CONFIG = get_config()

SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = ["*"]  # GuardMiddleware decides, with an answer in the API's envelope
ROOT_URLCONF = "somafractalmemory.server.urls"
WSGI_APPLICATION = "somafractalmemory.server.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
APPEND_SLASH = False

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "ninja",
    "somafractalmemory.memories",
    "somafractalmemory.dashboard",
]
MIDDLEWARE = [
    "somafractalmemory.server.middleware.RequestMiddleware",
    "somafractalmemory.server.middleware.GuardMiddleware",
    "django.middleware.common.CommonMiddleware",
    "somafractalmemory.server.middleware.JsonErrorsMiddleware",
    "somafractalmemory.server.middleware.AuthMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": []},
    }
]
STATIC_URL = "static/"
# A full batch (max_batch items at the content and metadata limits) must fit, with room for
# JSON escaping; larger bodies answer 413 payload_too_large.
DATA_UPLOAD_MAX_MEMORY_SIZE = (
    2 * CONFIG.max_batch * (CONFIG.max_content_bytes + CONFIG.max_metadata_bytes)
)


def _databases() -> dict[str, Any]:
    url = CONFIG.effective_database_url
    if url:
        db = dj_database_url.parse(url, conn_max_age=600, conn_health_checks=True)
        if db["ENGINE"].endswith("postgresql"):
            # Fail fast when the server is down instead of hanging a request thread, and
            # notice a kept connection whose host vanished (TCP keepalive, ~25 s).
            options = db.setdefault("OPTIONS", {})
            options.setdefault("connect_timeout", 3)
            options.setdefault("keepalives", 1)
            options.setdefault("keepalives_idle", 10)
            options.setdefault("keepalives_interval", 5)
            options.setdefault("keepalives_count", 3)
        return {"default": db}
    CONFIG.data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(CONFIG.data_dir / "sfm.sqlite3"),
            # Kept by each request thread, as a server's are: opening one and running its
            # pragmas took 0.4 ms of every request.
            "CONN_MAX_AGE": 600,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {
                # WAL lets readers run beside the writer; FULL syncs each commit, so an
                # acknowledged write survives a crash of the process or the machine.
                # secure_delete zeroes what a delete frees: erased rows leave no bytes behind.
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA secure_delete=ON;"
                ),
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }


DATABASES = _databases()

CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CONFIG.redis_url,
            # A dead Redis must cost milliseconds, not a hung request.
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
        if CONFIG.redis_url
        else {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "sfm",
            "OPTIONS": {"MAX_ENTRIES": 20_000},  # ~1.5 KB per cached query vector
        }
    )
}

LOGGING = logging_config(CONFIG.log_format)
