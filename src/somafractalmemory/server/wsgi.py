"""WSGI entry point (gunicorn: `somafractalmemory.server.wsgi:application`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "somafractalmemory.server.settings")
application = get_wsgi_application()
