"""Where a request goes: /api/v2/* to the Ninja API, /healthz and /readyz to probes,
/metrics to Prometheus, the rest to the dashboard."""

from pathlib import Path

import ninja
from django.urls import include, path, re_path
from django.views.static import serve

from somafractalmemory.server.api import api
from somafractalmemory.server.probes import (
    healthz,
    json_400,
    json_404,
    json_500,
    metrics_view,
    readyz,
)

# The docs UI's own scripts ship inside django-ninja; serve them without a CDN or collectstatic.
NINJA_STATIC = Path(ninja.__file__).parent / "static" / "ninja"

urlpatterns = [
    path("api/v2/", api.urls),
    path("healthz", healthz),
    path("readyz", readyz),
    path("metrics", metrics_view),
    re_path(r"^static/ninja/(?P<path>.+)$", serve, {"document_root": str(NINJA_STATIC)}),
    path("", include("somafractalmemory.dashboard.urls")),
]

handler400 = json_400
handler404 = json_404
handler500 = json_500
