"""The Django project: settings (read from conf), URLs, WSGI/ASGI entry points."""
